"""``JobBuffer``: a bounded in-process buffer of claimed jobs, refilled by a poller task."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime

import trio

from . import _poller
from ._acks import AckBatcher
from ._buffer_acks import AckMethods
from ._config import BufferConfig
from ._errors import (
    BufferAlreadyRunningError,
    BufferClosedError,
    ConfigError,
)
from ._job import Job
from ._shutdown import shutdown
from ._source import JobSource, WorkerInfo
from ._stats import BufferStats, Counters
from ._trio_util import single_error

__all__ = ["JobBuffer", "open_job_buffer"]

log = logging.getLogger("jobbuf.buffer")


RETRY_WAKE_HORIZON = 10
"""A retry of a job this buffer failed, due within this many ``poll_interval`` s, wakes
its poller when due (see ``JobBuffer._retry_due_in``)."""
_SOURCE_CALLS = ("claim", "release", "release_owner", "ack", "heartbeat", "deregister", "listen")
"""The JobSource methods a buffer calls (a source needs no more)."""


def _check_worker_id(worker_id: object) -> str:
    if not isinstance(worker_id, str) or not worker_id.strip() or len(worker_id) > 200 or not worker_id.isprintable():
        raise ConfigError(
            f"worker_id={worker_id!r} is invalid: use a non-empty printable string of at most 200 characters"
        )
    return worker_id


class JobBuffer(AckMethods):
    """Claims jobs from a source in batches and hands them to workers through :meth:`take_job`.

    Start it with ``await nursery.start(buf.run)`` or, usually, ``async with
    open_job_buffer(...)``. Stop is cancellation. Guarantees:

    - depth never exceeds ``capacity``; the poller claims only while depth (plus the rows
      of claims in flight) < ``low_water``, ``batch_size`` rows per claim statement;
    - ``take_job`` is cancellation-atomic: cancelled, it either returned a job or left it
      buffered;
    - nothing is stranded: entries discarded by TTL, returned by ``stop()``, or still held
      when ``run`` ends go back to the source (the attempt given back);
    - acks are batched across concurrent callers and return once durable.
    """

    def __init__(self, source: JobSource, worker_id: str, config: BufferConfig | None = None) -> None:
        if config is not None and not isinstance(config, BufferConfig):
            raise ConfigError(f"config={config!r} is invalid: pass a BufferConfig(...) or None")
        missing = [name for name in _SOURCE_CALLS if not callable(getattr(source, name, None))]
        if missing:
            raise ConfigError(
                f"source={source!r} is not a JobSource (no {', '.join(missing)}): pass the source itself, e.g. "
                "the one `async with open_postgres_source(dsn) as source:` gives, or a MemoryJobSource()"
            )
        self._source = source
        self._worker_id = _check_worker_id(worker_id)
        self.config = config or BufferConfig()
        self._instance = ""
        self._state = "new"  # new -> running -> stopped (poller gone) -> closed (run ended)
        self._stopping = False
        self._started = False  # run() has started (offers are taken from then on)
        self._exiting = False  # set when shutdown begins (see _drain)
        self._stop_drained = trio.Event()  # clear while stop() releases what it drained
        self._stop_drained.set()
        self._entries: deque[tuple[Job, float]] = deque()  # (job, trio time it entered)
        self._in_flight: dict[int, Job] = {}  # taken, not yet acked
        self._discarded: list[Job] = []  # TTL-discarded, awaiting release by the poller
        self._handed_off: set[int] = set()  # own claims given away by stop(release=False)
        # Jobs whose ack raised DatabaseUnavailableError: maybe applied, maybe still claimed
        # by us. Not held (no lease extension for a job nobody works on), but a shutdown that
        # cannot reach the database names them among the unreleased jobs.
        self._unconfirmed: dict[int, Job] = {}
        self._given_back: set[int] = set()  # see AckMethods._acked
        self._takers = trio.lowlevel.ParkingLot()
        self._wake = trio.Event()
        self._retries: list[float] = []  # heap: trio times jobs this buffer failed fall due
        self._poll_timer: trio.CancelScope | None = None  # the poller's sleep, while it sleeps
        self._poller_scope: trio.CancelScope | None = None
        self._poller_done = trio.Event()
        self._counters = Counters()
        self._acks = AckBatcher(source, self.config.max_attempts, self.config.shutdown_timeout)
        self._on_acked = self._acked  # bound once: a bound method made per ack is one more object per job
        self._worker: WorkerInfo | None = None
        self._leases_extended_at = -math.inf  # trio time of the last successful extension
        self._answered_at = -math.inf  # trio time the last successful heartbeat began
        self._claiming = 0  # rows asked for by claims in flight
        # Fixed when run is cancelled (see _fix_exit_deadline_when_cancelled): the claims
        # then in flight end before it, and the shutdown after them ends by it, so their
        # timeouts do not add up.
        self._exit_deadline = math.inf

    # -- the contract's read-only view ---------------------------------------------------
    @property
    def worker_id(self) -> str:
        """The worker id used for every claim."""
        return self._worker_id

    @property
    def instance(self) -> str:
        """This start's instance id (the owner of its claims); empty before start."""
        return self._instance

    @property
    def running(self) -> bool:
        """True from the start of ``run`` until ``stop()`` or exit (the poller is active)."""
        return self._state == "running"

    @property
    def depth(self) -> int:
        """Jobs buffered now."""
        return len(self._entries)

    def stats(self) -> BufferStats:
        """A frozen snapshot of this buffer's counters."""
        return BufferStats(
            worker_id=self._worker_id, instance=self._instance, running=self.running,
            capacity=self.config.capacity, depth=len(self._entries), in_flight=len(self._in_flight),
            snapshot_at=time.time(), **self._counters.values(),
        )  # fmt: skip

    async def subscribe_stats(self, interval: float | None = None) -> AsyncIterator[BufferStats]:
        """Yield a snapshot now and then every ``interval`` seconds (default
        ``config.stats_interval``) until the buffer's ``run`` has ended; the same snapshots
        the buffer publishes to the database. Use :func:`jobbuf.rates` for per-second rates."""
        every = self.config.stats_interval if interval is None else interval
        if isinstance(every, bool) or not every > 0:
            raise ConfigError(f"interval={interval!r} is invalid: pass seconds > 0, or None for stats_interval")
        while True:
            yield self.stats()
            if self._state == "closed":
                return
            await trio.sleep(every)

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, then poll and heartbeat until cancelled; on the way out flush acks,
        release everything this instance still holds, and deregister (shielded, within
        ``config.shutdown_timeout``). Start with ``nursery.start``: start-up errors (for
        example an unreachable database) surface from there.

        Raises :class:`BufferAlreadyRunningError` if this buffer was started before.
        """
        if self._state != "new":
            raise BufferAlreadyRunningError(
                f"buffer {self._worker_id!r} was already started (state: {self._state}); create a new JobBuffer"
            )
        self._state = "running"
        self._instance = uuid.uuid4().hex
        self._counters.started_at = time.time()
        self._worker = WorkerInfo(
            worker_id=self._worker_id, instance=self._instance, host=socket.gethostname(), pid=os.getpid(),
            queues=self.config.queues, started_at=datetime.now(UTC), config=asdict(self.config),
        )  # fmt: skip
        unsubscribe = self._source.listen(self.config.queues, self.wake)
        try:
            await self._publish(extend_leases=False)  # the first touch of the database
        except BaseException:
            unsubscribe()  # nothing was claimed yet: nothing to release
            self._close()
            self._state = "closed"
            self._poller_done.set()  # no poller will run: a concurrent stop() must not wait for one
            raise
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_poller)
                nursery.start_soon(_poller.heartbeat_loop, self)
                nursery.start_soon(self._fix_exit_deadline_when_cancelled)
                self._started = True
                task_status.started()
        finally:
            unsubscribe()
            self._close()
            await shutdown(self)

    async def _fix_exit_deadline_when_cancelled(self) -> None:
        # run's tasks end only when it is cancelled (or one of them fails): that is when the
        # exit begins, while claims may still be in flight (shielded, so nothing else
        # notices the cancellation until they land). Each claim is bounded by
        # shutdown_timeout from its start, so those in flight end before this deadline,
        # and the shutdown after them (flush, release, deregistration) ends by it.
        try:
            await trio.sleep_forever()
        finally:
            self._exit_deadline = trio.current_time() + self.config.shutdown_timeout

    async def _run_poller(self) -> None:
        try:
            with trio.CancelScope() as self._poller_scope:
                await _poller.poll_loop(self)
        finally:
            self._poller_done.set()

    def _close(self) -> None:
        self._stopping = True
        if self._state == "running":
            self._state = "stopped"
        self._takers.unpark_all()

    async def stop(self, join_timeout: float | None = None, *, release: bool = True) -> list[Job]:
        """Stop polling, wait for the poller (cancelling it after ``join_timeout``), drain
        the buffer and return the jobs that were buffered but not taken.

        With ``release=True`` they are also released to the source (if that fails, the
        failure is counted in ``stats().poll_errors`` and they stay this buffer's: the exit
        releases them by owner, or names them in its error); with ``release=False`` the
        caller owns them (they keep their claim and can be offered to another buffer).
        Acks of jobs already taken are accepted until ``run`` ends. Idempotent; before
        start it returns ``[]``, and so it does if the buffer's exit begins while it waits
        for the poller, or if the poller, cancelled, has not ended by ``shutdown_timeout``
        (the exit releases the jobs). A release cut off by that deadline counts as a
        failed one. Afterwards ``take_job`` raises :class:`BufferClosedError`.
        """
        if join_timeout is not None and (isinstance(join_timeout, bool) or not join_timeout >= 0):
            raise ConfigError(f"join_timeout={join_timeout!r} is invalid: pass seconds >= 0, or None to wait")
        if self._state != "running":
            return []
        self._state = "stopped"
        self._stopping = True
        # The same budget as the exit's: claims in flight end before it (see above).
        deadline = trio.current_time() + self.config.shutdown_timeout
        self._wake.set()
        self._takers.unpark_all()
        returned = False
        try:
            with trio.move_on_after(math.inf if join_timeout is None else join_timeout):
                await self._poller_done.wait()
            returned = True
        finally:
            # Also when stop() itself is cancelled: the buffer must not keep jobs it will
            # never hand out. A caller that is cancelled cannot receive them, so then they
            # are released even with release=False.
            jobs = await self._drain(release=release or not returned, deadline=deadline)
        return jobs

    async def _drain(self, *, release: bool, deadline: float) -> list[Job]:
        with trio.CancelScope(shield=True, deadline=deadline):
            if self._poller_scope is not None:
                self._poller_scope.cancel()  # hard stop: a claim in flight is released by owner at exit
                await self._poller_done.wait()
        # A deadline already past (a join longer than shutdown_timeout) ends the wait above
        # at once, not the drain: no await from here to the hand-off.
        if self._exiting or (self._poller_scope is not None and not self._poller_done.is_set()):  # exit releases them
            return []
        jobs = [job for job, _ in self._entries]
        self._entries.clear()
        if not release:
            self._handed_off.update(j.id for j in jobs if j.claim is not None and j.claim.owner == self._instance)
        self._stop_drained = drained = trio.Event()
        with trio.CancelScope(shield=True, deadline=deadline) as releasing:
            try:
                await self._release_keeping((jobs if release else []) + self._take_discarded())
            except Exception as exc:  # kept: the exit releases them by owner, or names them
                self._record_error("stop", exc)
            finally:
                drained.set()
        if releasing.cancelled_caught:  # kept too
            self._record_error(
                "stop", TimeoutError(f"release not done within shutdown_timeout ({self.config.shutdown_timeout:g}s)")
            )
        return jobs

    # -- the hot path --------------------------------------------------------------------
    async def take_job(self, timeout: float | None = None) -> Job | None:
        """Wait up to ``timeout`` seconds (forever if ``None``) for a job; ``None`` on timeout.

        Entries older than ``config.ttl`` (or whose lease may have lapsed: no successful
        heartbeat for 0.8 x ``lease``) are discarded silently: counted in
        ``stats().discarded`` and released to the source without charging an attempt.
        Cancellation-atomic: cancelled, it either returned a job or left it buffered.
        Raises :class:`BufferClosedError` once the buffer is stopped.
        """
        if timeout is not None and (isinstance(timeout, bool) or not timeout >= 0):
            raise ConfigError(f"timeout={timeout!r} is invalid: pass seconds >= 0, or None to wait forever")
        # One scheduling point, *before* the pop: from the pop to the return nothing can
        # raise Cancelled, so a popped job is always a returned job.
        await trio.lowlevel.checkpoint()
        job = self._pop()
        if job is not None:
            return job
        if timeout is None:  # no cancel scope to build: this is every idle worker's path
            while job is None:
                await self._takers.park()
                # No checkpoint between here and return: a job popped is a job returned.
                job = self._pop()
            return job
        with trio.move_on_after(timeout):
            while job is None:
                await self._takers.park()
                job = self._pop()  # as above
        return job

    def _pop(self) -> Job | None:
        if self._stopping:
            raise BufferClosedError(f"buffer {self._worker_id!r} is stopped")
        entries, now = self._entries, trio.current_time()
        stale_before = self._stale_before(now)
        while entries:
            job, entered = entries.popleft()
            if entered < stale_before:
                self._discard(job)
                continue
            self._in_flight[job.id] = job
            self._counters.taken += 1
            if len(entries) == self.config.low_water - 1:  # this take crossed the low-water mark
                self._wake.set()
            return job
        return None

    def _discard(self, job: Job) -> None:
        self._counters.discarded += 1
        if job.claim is not None:
            self._discarded.append(job)
        self._wake.set()

    def offer_jobs(self, jobs: Iterable[Job]) -> int:
        """Put jobs straight into the buffer, without claiming; return how many it took.

        It takes up to the free capacity, in order; the caller keeps the rest. A job keeps
        any claim it carries, so it can still be acked; its TTL counts from now. To move
        claimed jobs between buffers, take them from ``stop(release=False)`` of the first:
        a job still held (buffered or taken) by a running buffer is released when that
        buffer exits. All-or-nothing on bad input: a non-``Job`` is a ``TypeError``.
        Raises :class:`BufferClosedError` once stopped, and before ``run`` has started
        (while it starts too): a buffer whose start fails could not give them back.
        """
        if self._stopping:
            raise BufferClosedError(f"buffer {self._worker_id!r} is stopped")
        if not self._started:
            raise BufferClosedError(f"buffer {self._worker_id!r} has not started: offer jobs once it runs")
        accepted = list(itertools.islice(jobs, self._free()))
        for job in accepted:
            if not isinstance(job, Job):
                raise TypeError(f"offer_jobs takes Job objects, got {type(job).__name__}")
        now, taken = trio.current_time(), len(accepted)
        for job in accepted:
            self._in_flight.pop(job.id, None)
            self._entries.append((job, now))
        self._counters.offered += taken
        self._takers.unpark(count=taken)
        return taken

    def wake(self) -> None:
        """Ask the poller to look for jobs now instead of at its next ``poll_interval``.

        A hint, like a NOTIFY: useful when jobs become due without an announcement (a
        ``run_at`` passing, or another buffer's retry; this buffer's own retries due within
        ``RETRY_WAKE_HORIZON`` poll intervals wake it by themselves)."""
        self._wake.set()

    def _retry_due_in(self, delay: float) -> None:
        """A job this buffer failed is pending again, due in ``delay`` seconds, and nothing
        will announce it: the poller claims then (its sleep ends by then). A later one the
        regular poll finds, up to about ``poll_interval`` late, which is small against its delay."""
        if delay >= RETRY_WAKE_HORIZON * self.config.poll_interval:
            return
        # A little late rather than early: the source sets run_at from its own clock when
        # the ack ran (before we got the answer, but rounded, and on another host maybe
        # with a drifting clock), and a claim a moment early finds nothing.
        due = trio.current_time() + delay * 1.001 + 1e-3
        heapq.heappush(self._retries, due)
        timer = self._poll_timer
        if timer is not None and due < timer.deadline:
            timer.deadline = due

    # -- used by the poller and shutdown -------------------------------------------------

    def _claim_limit(self) -> int:
        """Rows the next claim may ask for: 0 unless depth plus the rows of claims in
        flight is below ``low_water``; then up to ``batch_size``, within the capacity not
        yet taken or promised to a claim in flight. Beside claims in flight, only a full
        ``batch_size``: so the default (``batch_size == capacity``) claims one at a time."""
        depth = len(self._entries) + self._claiming
        if depth >= self.config.low_water:
            return 0
        limit = min(self.config.claim_size, self.config.capacity - depth)
        return limit if self._claiming == 0 or limit == self.config.claim_size else 0

    def _free(self) -> int:
        return self.config.capacity - len(self._entries)

    async def _claim_once(self, limit: int) -> bool:
        """Claim up to ``limit`` rows into the buffer; return whether it came back full."""
        # Shielded (with a deadline): a claim cancelled mid-statement could still commit on
        # the server after the exit's release-by-owner ran, leaving rows claimed by a gone
        # instance until their lease expires. Letting it finish puts them in the buffer,
        # where stop() and the exit release them.
        with trio.CancelScope(shield=True, relative_deadline=self.config.shutdown_timeout) as scope:
            result = await self._source.claim(
                owner=self._instance, worker_id=self._worker_id, queues=self.config.queues, limit=limit,
                lease=self.config.lease, default_max_attempts=self.config.max_attempts,
            )  # fmt: skip
        if scope.cancelled_caught:
            raise TimeoutError(f"claim not answered within shutdown_timeout ({self.config.shutdown_timeout:g}s)")
        c = self._counters
        c.polls += 1
        c.dead += result.dead + result.quarantined
        c.quarantined += result.quarantined
        if not result.jobs:
            c.empty_polls += 1
            return False
        c.claimed += len(result.jobs)
        c.last_claim_at = time.time()
        # offer_jobs may have filled the buffer while the claim ran (offers win): what no
        # longer fits goes straight back.
        fits = self._free()
        now = trio.current_time()
        self._entries.extend((job, now) for job in result.jobs[:fits])
        self._takers.unpark(count=min(fits, len(result.jobs)))
        if len(result.jobs) > fits:
            overflow = result.jobs[fits:]
            try:
                await self._release(overflow)
            except BaseException:
                self._discarded.extend(overflow)  # still ours: the next round or shutdown releases them
                raise
        return len(result.jobs) + result.dead + result.quarantined >= limit

    def _stale_before(self, now: float) -> float:
        """Entries that entered before this time must no longer be handed out: past the
        TTL, or, while heartbeats keep failing, once their lease may have lapsed (another
        buffer could rescue them then, and two buffers would hold one job). One number
        for the whole deque: entries are in entry order, so the stale ones lead."""
        cut = now - self.config.ttl
        lease_cut = now - 0.8 * self.config.lease
        if self._leases_extended_at < lease_cut:  # no extension within 0.8 x lease
            cut = max(cut, lease_cut)
        return cut

    def _sweep_stale(self) -> None:
        entries, stale_before = self._entries, self._stale_before(trio.current_time())
        while entries and entries[0][1] < stale_before:
            self._discard(entries.popleft()[0])

    def _next_expiry(self) -> float:
        """Seconds until the oldest entry goes stale. When empty: the soonest an entry
        arriving from now on (a claim in flight landing, an offer) could go stale, so the
        poller, which reads this before it sleeps, wakes in time to sweep it."""
        if not self._entries:
            return min(self.config.ttl, 0.8 * self.config.lease)
        entered = self._entries[0][1]
        stale_at = min(entered + self.config.ttl, max(entered, self._leases_extended_at) + 0.8 * self.config.lease)
        return max(0.0, stale_at - trio.current_time()) + 1e-3

    def _take_discarded(self) -> list[Job]:
        jobs, self._discarded = self._discarded, []
        return jobs

    async def _release_unseen(self) -> None:
        """Release the rows this instance holds in the source that it does not know of
        (claimed by a claim whose reply never came). Only while no claim is in flight:
        one landing now would hold rows not in the books yet."""
        keep = {job.id for job in self._held(unconfirmed=True)} | self._handed_off
        released = await self._source.release_owner(self._instance, keep=keep)
        self._counters.released += len(released)
        if released:
            self._wake.set()  # ready again: claim them

    async def _release_discarded(self) -> None:
        await self._release_keeping(self._take_discarded())

    async def _release_keeping(self, jobs: list[Job]) -> None:
        """Release ``jobs``; if that fails, keep them among the discarded, still ours, for
        the next round or the exit (which releases them by owner, or names them)."""
        try:
            await self._release(jobs)
        except BaseException:
            self._discarded.extend(jobs)
            raise

    async def _release(self, jobs: list[Job]) -> list[int]:
        if not jobs:
            return []
        released = await self._source.release(jobs)
        self._counters.released += len(released)
        return released

    def _held(self, *, unconfirmed: bool = False) -> list[Job]:
        """What the buffer holds: buffered, taken and discarded jobs; with ``unconfirmed``,
        also those whose ack failed for want of the database (their rows are still claimed
        as far as we know, but nobody works on them: their leases are not extended)."""
        held = [job for job, _ in self._entries] + list(self._in_flight.values()) + self._discarded
        if unconfirmed:
            known = {job.id for job in held}
            held += [job for job in self._unconfirmed.values() if job.id not in known]
        return held

    async def _publish(self, *, extend_leases: bool) -> None:
        assert self._worker is not None
        lease = self.config.lease if extend_leases else None
        await self._source.heartbeat(self._worker, self._held(), lease, self.stats().as_dict())

    def _record_error(self, where: str, exc: BaseException) -> None:
        self._counters.poll_errors += 1
        self._counters.last_error = f"{where}: {type(exc).__name__}: {exc}"[:1000]
        log.warning("jobbuf buffer %r: %s failed: %s", self._worker_id, where, exc)


@asynccontextmanager
async def open_job_buffer(
    source: JobSource, worker_id: str, config: BufferConfig | None = None
) -> AsyncIterator[JobBuffer]:
    """Run a :class:`JobBuffer` for the duration of the block.

    Leaving the block (normally, by error or by cancellation) stops claiming, flushes
    pending acks, releases everything the buffer still holds and deregisters it, within
    ``config.shutdown_timeout``. A single error is raised as itself, never wrapped in an
    ExceptionGroup.
    """
    buf = JobBuffer(source, worker_id, config)
    # Once started, the buffer runs shielded until the block is left: when an enclosing
    # scope is cancelled, the body's shielded acks must still land before the buffer shuts
    # down. Not before it started: a caller cancelled during start-up must be able to
    # cancel the start (trio then waits for the task to end, which a shield would prevent).
    run_scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with run_scope:
            await buf.run(task_status=task_status)

    with single_error():
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            run_scope.shield = True
            try:
                yield buf
            finally:
                run_scope.cancel()
