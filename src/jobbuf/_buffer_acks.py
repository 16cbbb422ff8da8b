"""The ack half of :class:`~jobbuf.JobBuffer`: ``complete``, ``fail``, ``release``."""

from __future__ import annotations

import logging
import traceback

import trio

from . import _jitter
from ._acks import AckBatcher, OnAcked
from ._config import BufferConfig, check_delay
from ._errors import BufferClosedError, DatabaseUnavailableError, LeaseLostError
from ._job import Job
from ._source import Ack, AckOutcome
from ._stats import Counters

__all__ = ["AckMethods"]

log = logging.getLogger("jobbuf.buffer")


def _storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: ``text`` refuses NUL and lone surrogates, and
    an ack carrying them would be refused every time (its job given back, run, refused...)."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


class AckMethods:
    """Acks of a buffer's jobs; mixed into :class:`~jobbuf.JobBuffer`, whose state it uses."""

    config: BufferConfig
    _worker_id: str
    _state: str
    _acks: AckBatcher
    _in_flight: dict[int, Job]
    _unconfirmed: dict[int, Job]
    _counters: Counters
    _on_acked: OnAcked  # self._acked, bound once
    _discarded: list[Job]
    _wake: trio.Event
    _given_back: set[int]  # ids of jobs whose failed ack gave them back (see _acked)

    async def _release(self, jobs: list[Job]) -> list[int]:
        raise NotImplementedError  # JobBuffer's

    def _retry_due_in(self, delay: float) -> None:
        raise NotImplementedError  # JobBuffer's

    async def complete(self, job: Job) -> None:
        """Mark ``job`` done, durably (batched with concurrent acks).

        Raises :class:`LeaseLostError` if another owner holds it now (nothing changed),
        :class:`BufferClosedError` after ``run`` ended, and
        :class:`DatabaseUnavailableError` if the database stayed unreachable.
        """
        await self._ack(Ack(job))

    async def fail(self, job: Job, error: BaseException | str, *, retry_in: float | None = None) -> None:
        """Record a failed attempt: retry after ``retry_in`` seconds (default: exponential
        backoff with jitter, see :meth:`retry_delay`), or make the job dead, keeping
        ``error``, once it has used ``max_attempts``. Same errors as :meth:`complete`."""
        await self._ack(self._failure(job, error, retry_in))

    def _failure(self, job: Job, error: BaseException | str, retry_in: float | None) -> Ack:
        delay = self.retry_delay(job.attempts) if retry_in is None else check_delay("retry_in", retry_in)
        text = error if isinstance(error, str) else "".join(traceback.format_exception_only(error)).strip()
        return Ack(job, error=_storable(text)[:4000], retry_in=delay)

    def retry_delay(self, attempts: int) -> float:
        """Backoff after a failed attempt: ``d = min(retry_max, retry_base * 2 ** (attempts - 1))``,
        then "equal jitter": a uniform value in ``[d/2, d]``."""
        d = min(self.config.retry_max, self.config.retry_base * 2.0 ** min(max(attempts - 1, 0), 60))
        return _jitter.uniform(d / 2, d)

    async def release(self, job: Job) -> bool:
        """Give a taken job back to the source unprocessed (attempt given back). Returns
        whether the row was released (False if its claim no longer matches).
        :class:`BufferClosedError` after ``run`` ended."""
        self._check_open(job, "release")
        try:
            released = await self._release([job])
        except DatabaseUnavailableError:
            self._in_flight.pop(job.id, None)
            self._unconfirmed[job.id] = job  # still ours as far as we know (see __init__)
            raise
        # Any other error, or a cancellation: still in flight, so still ours (its lease
        # extended, and released at the exit; a release is guarded, so twice is harmless).
        self._in_flight.pop(job.id, None)
        self._unconfirmed.pop(job.id, None)
        if job.id in released:
            self._wake.set()  # the source's wake-up would do, unless its listener is down
        return job.id in released

    async def _ack(self, ack: Ack) -> None:
        job = ack.job
        self._check_open(job)
        if job.claim is None:  # built by hand: nothing to change in the source
            await trio.lowlevel.checkpoint()
            outcome: AckOutcome = "done" if ack.error is None else "retry"
        else:
            try:
                # Cancelled after the ack joined a flush, the flush still settles it (through
                # _acked); cancelled before, the ack is withdrawn and the job stays in flight,
                # still ours: acked again later, or released at the exit.
                outcome = await self._acks.submit(ack, self._acked)
            except DatabaseUnavailableError as exc:
                self._settle(ack, None, exc)
                raise
        self._settle(ack, outcome, None)
        if outcome == "lost":
            raise LeaseLostError(
                f"job {job.id} is no longer owned by this buffer (lease lost to another owner); ack not applied",
                (job.id,),
            )

    def _ack_soon(self, ack: Ack) -> None:
        """Queue ``ack`` without waiting for it (``run_workers``' path; a pump flushes it).

        The job stays in flight, its lease extended, until the flush ends; the outcome is
        counted then, and a lost lease or an unreachable database is logged."""
        self._check_open(ack.job)
        if ack.job.claim is None:  # built by hand: nothing to change in the source
            self._settle(ack, "done" if ack.error is None else "retry", None)
        else:
            self._acks.submit_nowait(ack, self._on_acked)

    def _acked(self, ack: Ack, outcome: AckOutcome | None, error: BaseException | None) -> None:
        # An ack nobody waits for (run_workers', or an abandoned complete()'s). One that
        # failed without applying anything will not be sent again: give the job back (the
        # poller releases it, guarded by its claim, the attempt given back) so it is
        # delivered again, rather than holding it for the buffer's whole life.
        # Once per job: an ack that fails again the same way would loop (claimed, run,
        # given back, at once, with the attempt given back too). The second time the job
        # leaves the books instead; its lease lapses and a claim rescues it, counting the
        # attempt, so such a job ends dead after max_attempts (unless the exit comes first:
        # its release by owner covers every row still claimed by this instance).
        job = ack.job
        if outcome is None and error is not None and not isinstance(error, DatabaseUnavailableError):
            if self._in_flight.pop(job.id, None) is not None and job.id not in self._given_back:
                self._given_back.add(job.id)
                self._discarded.append(job)
                self._wake.set()
        else:
            self._settle(ack, outcome, error)
        if error is not None:
            log.warning("jobbuf buffer %r: ack of job %s not confirmed: %s", self._worker_id, ack.job.id, error)
        elif outcome == "lost":
            log.warning("jobbuf buffer %r: job %s was taken over; ack not applied", self._worker_id, ack.job.id)

    def _check_open(self, job: Job, what: str = "ack") -> None:
        if self._state == "closed":
            raise BufferClosedError(f"buffer {self._worker_id!r} has exited; {what} of job {job.id} refused")

    def _settle(self, ack: Ack, outcome: AckOutcome | None, error: BaseException | None) -> None:
        """Bookkeeping once an ack's flush ended: with a known outcome the job leaves the
        in-flight set and the outcome is counted; an ack the database could not confirm (it
        may have been applied) moves the job to the unconfirmed record (the shutdown error
        names it). Otherwise (an error that applied nothing, for a caller that got it; a
        flush cut short) the job stays in flight, still this buffer's: its lease extended,
        acked again or released at the exit. A retry the source applied wakes the poller
        when it falls due (``_retry_due_in``)."""
        job = ack.job
        if outcome is None:
            if isinstance(error, DatabaseUnavailableError):
                self._in_flight.pop(job.id, None)
                self._unconfirmed[job.id] = job
            return
        self._in_flight.pop(job.id, None)
        self._unconfirmed.pop(job.id, None)
        self._count_outcome(outcome)
        if outcome == "retry" and job.claim is not None:
            self._retry_due_in(ack.retry_in)

    def _count_outcome(self, outcome: AckOutcome) -> None:
        c = self._counters
        if outcome == "done":
            c.completed += 1
        elif outcome == "lost":
            c.lease_lost += 1
        else:
            c.failed += 1
            c.dead += outcome == "dead"
