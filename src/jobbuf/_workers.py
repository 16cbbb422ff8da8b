"""``run_workers``: a pool of trio tasks that take jobs from a buffer and ack them."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ._acks import AckBatcher
from ._buffer import JobBuffer
from ._errors import BufferClosedError, ConfigError, JobbufError
from ._job import Job
from ._source import completion

__all__ = ["run_workers"]

log = logging.getLogger("jobbuf.workers")
ACK_BACKLOG = 1000
"""Queued acks beyond which a worker waits for a flush before taking its next job."""
BURST = 0.0005
"""Seconds a worker may go on taking buffered jobs without a scheduling point (see ``_worker``)."""
Handler = Callable[[Job], Awaitable[Any]]


async def run_workers(
    buf: JobBuffer, handler: Handler, *, concurrency: int = 10, job_timeout: float | None = None
) -> None:
    """Run ``concurrency`` tasks that take jobs from ``buf`` and call ``await handler(job)``.

    A normal return completes the job; an exception (or exceeding ``job_timeout``
    seconds) fails it, which schedules a retry with backoff or makes it dead. Runs until
    cancelled, or until the buffer is stopped and drained.

    While jobs are buffered, a worker runs them back to back for up to ``BURST`` seconds
    between scheduling points, so handlers that never await still let other tasks run.
    A worker does not wait for its ack to commit before taking the next job: acks are
    queued and group-committed by a pump task (the job stays in flight, its lease
    extended, until then), and ``run_workers`` returns or propagates cancellation only
    after every queued ack was flushed. If the database falls behind by ``ACK_BACKLOG``
    acks, workers wait for it.

    On cancellation a running handler is cancelled and its job released (not failed: it
    did not fail, it was interrupted); a handler that already returned still gets its ack.
    Both are shielded, and all of this cleanup ends within one ``config.shutdown_timeout``
    from when it began (what is left is released or flushed when the buffer exits). An ack
    the database rejects (lease lost, counted in ``stats().lease_lost``) or cannot take
    (logged; the job is named if the exit cannot release it) does not stop the workers:
    the job is then delivered again, which at-least-once allows.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency={concurrency!r} is invalid: it must be an int >= 1")
    if job_timeout is not None and (isinstance(job_timeout, bool) or not job_timeout > 0):
        raise ConfigError(f"job_timeout={job_timeout!r} is invalid: pass seconds > 0, or None for no limit")
    acks = buf._acks
    cleanup = _Cleanup(buf.config.shutdown_timeout, acks)
    try:
        async with trio.open_nursery() as pump:
            # Workers queue their acks and move on; the pump leads the (pipelined) flushes.
            pump.start_soon(acks.pump)
            try:
                async with trio.open_nursery() as nursery:
                    for _ in range(concurrency):
                        nursery.start_soon(_worker, buf, handler, job_timeout, cleanup)
            finally:
                # Stopped or cancelled: acks of handlers that returned still land.
                with cleanup.scope():
                    await acks.drain()
                pump.cancel_scope.cancel()
    finally:
        cleanup.close()


class _Cleanup:
    """One deadline for all of a ``run_workers``' cleanup, fixed when the first part of it
    starts: the releases of cancelled handlers' jobs, the final ack flush and any flush
    the pump starts meanwhile share it."""

    def __init__(self, seconds: float, acks: AckBatcher) -> None:
        self._seconds = seconds
        self._acks = acks
        self._deadline = math.inf

    def scope(self) -> trio.CancelScope:
        """A shielded scope that ends at the cleanup's deadline."""
        if self._deadline == math.inf:
            self._deadline = trio.current_time() + self._seconds
            self._acks.add_cutoff(self._deadline)
        return trio.CancelScope(shield=True, deadline=self._deadline)

    def close(self) -> None:
        if self._deadline != math.inf:
            self._acks.remove_cutoff(self._deadline)


async def _worker(buf: JobBuffer, handler: Handler, job_timeout: float | None, cleanup: _Cleanup) -> None:
    # After each take_job (a checkpoint), a worker goes on with jobs already buffered for
    # up to BURST seconds without a scheduling point: a task switch per job costs more
    # than a no-op job. It cannot strand a job: from the pop to the handler nothing can
    # raise Cancelled, and a handler cancelled at its first await releases its job. Other
    # tasks wait at most BURST (plus one handler's run) for the CPU; a handler that awaits
    # I/O yields anyway.
    pop, clock = buf._pop, time.perf_counter
    try:
        while True:
            job = await buf.take_job()
            if job is None:
                continue
            until = clock() + BURST  # counted from the checkpoint, so the first job's run counts too
            await _run_one(buf, handler, job, job_timeout, cleanup)
            while clock() < until and (job := pop()) is not None:
                await _run_one(buf, handler, job, job_timeout, cleanup)
    except BufferClosedError:
        return


async def _run_one(buf: JobBuffer, handler: Handler, job: Job, job_timeout: float | None, cleanup: _Cleanup) -> None:
    # The hot path: no cancel scope per job unless a timeout is asked for, and no wait
    # for the ack.
    error: BaseException | str | None = None
    try:
        if job_timeout is None:  # the hot path: no cancel scope, no extra coroutine
            await handler(job)
        elif not await call_handler(handler, job, job_timeout):
            error = f"job timed out after {job_timeout:g}s"
    except Exception as exc:
        error = exc
    except BaseException:  # cancelled (shutdown): the job goes back, unprocessed
        with cleanup.scope():
            await _quietly(buf.release(job), job)
        raise
    try:
        buf._ack_soon(completion(job) if error is None else buf._failure(job, error, None))
    except BufferClosedError:
        _log_refused(job)
        return
    if buf._acks.pending >= ACK_BACKLOG:  # the database is slower than the handlers: wait
        await buf._acks.wait_for_flush()


async def call_handler(handler: Handler, job: Job, job_timeout: float | None) -> bool:
    """``await handler(job)`` within ``job_timeout`` seconds; False if it ran out of time.

    The handler's own exceptions propagate. ``move_on_after``, not ``fail_after``: a
    handler's own ``TooSlowError`` is an ordinary failure and must not pass for the job's
    timeout. No cancel scope is built when there is no timeout (the hot path)."""
    if job_timeout is None:
        await handler(job)
        return True
    with trio.move_on_after(job_timeout) as deadline:
        await handler(job)
    return not deadline.cancelled_caught


async def _quietly(ack: Awaitable[Any], job: Job) -> None:
    try:
        await ack
    except BufferClosedError:
        _log_refused(job)
    except JobbufError as exc:
        log.warning("jobbuf: ack of job %s not applied: %s", job.id, exc)


def _log_refused(job: Job) -> None:
    log.warning("jobbuf: ack of job %s refused: the buffer has exited (the job is redelivered)", job.id)
