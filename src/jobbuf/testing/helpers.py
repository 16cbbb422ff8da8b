"""``drain``: run a buffer and workers over a source until it is idle, and report what happened.

This is the helper a test of a handler wants: enqueue some jobs, ``await drain(source,
handler)``, then assert on the returned :class:`DrainResult` (plain data) and on the source
(see :mod:`jobbuf.testing.assertions`). It goes through the real machinery
(:func:`jobbuf.open_job_buffer` and :func:`jobbuf.run_workers`), so claims, acks, retries
with backoff, leases and TTL behave exactly as in production.

With :class:`jobbuf.MemoryJobSource` under ``trio.testing.MockClock(autojump_threshold=0)``
(pytest-trio's ``autojump_clock`` fixture) every wait is virtual: a 30-minute retry backoff
passes in milliseconds of real time.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import trio

from .._buffer import JobBuffer, open_job_buffer
from .._config import BufferConfig
from .._errors import ConfigError
from .._job import Job
from .._source import JobSource, JobState, QueueCounts
from .._stats import BufferStats
from .._workers import Handler, call_handler, run_workers

__all__ = ["DeadJob", "DrainResult", "DrainTimeoutError", "FailedAttempt", "drain", "source_now"]


_FIRST_CHECK = 0.01
"""First idle-check interval (trio seconds); it doubles while nothing changes."""


class DrainTimeoutError(TimeoutError):
    """:func:`drain` gave up: work was still pending, scheduled, claimed or running when
    ``timeout`` (wall-clock seconds) passed. The message names what was left."""


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One delivery whose handler raised (or exceeded ``job_timeout``)."""

    job: Job
    """The job as delivered (``job.attempts`` is the attempt number)."""
    error: BaseException
    """What the handler raised; a ``TimeoutError`` for an exceeded ``job_timeout``."""


@dataclass(frozen=True, slots=True)
class DeadJob:
    """A job that, after this drain, is dead in the source (it used all its attempts)."""

    job: Job
    """The job as delivered on its last attempt."""
    error: str | None
    """The last error, as the source stored it."""


@dataclass(frozen=True, slots=True)
class DrainResult:
    """What one :func:`drain` did, as plain data.

    A job appears in ``completed`` once per delivery whose handler returned normally (with
    at-least-once delivery a job may be delivered again after a lost lease). ``failed``
    lists every failed delivery in order; ``dead`` the jobs this drain left dead.
    """

    completed: tuple[Job, ...]
    failed: tuple[FailedAttempt, ...]
    dead: tuple[DeadJob, ...]
    discarded: int
    """Entries the buffer dropped for exceeding its TTL (they were released and retried)."""
    stats: BufferStats
    """The buffer's final stats, taken after it exited."""
    elapsed: float
    """Trio seconds the drain took: virtual time under a ``MockClock``."""
    calls: tuple[Job, ...] = field(default=(), repr=False)
    """Every delivery handed to the handler, in order."""

    @property
    def completed_ids(self) -> list[int]:
        """Ids of ``completed``, in completion order."""
        return [job.id for job in self.completed]

    @property
    def completed_payloads(self) -> list[Any]:
        """Payloads of ``completed``, in completion order."""
        return [job.payload for job in self.completed]

    @property
    def dead_ids(self) -> list[int]:
        """Ids of ``dead``, in id order."""
        return [d.job.id for d in self.dead]

    def attempts(self, job_id: int) -> int:
        """How many times the handler was called for ``job_id`` during this drain."""
        return sum(1 for job in self.calls if job.id == job_id)

    def errors(self, job_id: int) -> list[BaseException]:
        """What the handler raised for ``job_id``, attempt by attempt."""
        return [f.error for f in self.failed if f.job.id == job_id]


@dataclass
class _Recorder:
    calls: list[Job] = field(default_factory=list)
    completed: list[Job] = field(default_factory=list)
    failed: list[FailedAttempt] = field(default_factory=list)
    running: Counter[int] = field(default_factory=Counter)
    progress: trio.Event = field(default_factory=trio.Event)

    async def call(self, handler: Handler, job_timeout: float | None, job: Job) -> None:
        self.calls.append(job)
        self.running[job.id] += 1
        try:
            if not await call_handler(handler, job, job_timeout):
                raise TimeoutError(f"job timed out after {job_timeout:g}s")
        except Exception as exc:
            self.failed.append(FailedAttempt(job, exc))
            raise
        else:
            self.completed.append(job)
        finally:
            self.running[job.id] -= 1
            if not self.running[job.id]:
                del self.running[job.id]
            self.progress.set()
            self.progress = trio.Event()


def source_now(source: JobSource) -> datetime:
    """The source's notion of now: ``source.now()`` when it has one (``MemoryJobSource``
    follows trio's virtual clock), else the wall clock in UTC."""
    now = getattr(source, "now", None)
    if callable(now):
        value = now()
        if isinstance(value, datetime):
            return value
    return datetime.now(UTC)


async def _queues_with_work(source: JobSource) -> tuple[str, ...]:
    counts = await source.queue_counts()
    queues = tuple(c.queue for c in counts if c.pending or c.scheduled or c.claimed)
    return queues or ("default",)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    counts: tuple[QueueCounts, ...]
    depth: int
    in_flight: int
    running: tuple[int, ...]

    @property
    def idle(self) -> bool:
        busy = any(c.pending or c.scheduled or c.claimed for c in self.counts)
        return not busy and not self.depth and not self.in_flight and not self.running

    @property
    def ready(self) -> bool:
        return any(c.pending for c in self.counts)


async def _snapshot(source: JobSource, buf: JobBuffer, rec: _Recorder, queues: Sequence[str]) -> _Snapshot:
    counts = tuple(c for c in await source.queue_counts() if c.queue in queues)
    return _Snapshot(counts, buf.depth, buf.stats().in_flight, tuple(sorted(rec.running)))


async def _describe(source: JobSource, snap: _Snapshot, queues: Sequence[str], timeout: float) -> str:
    lines = [f"drain() timed out after {timeout:g}s (wall clock) with work left:"]
    for c in snap.counts:
        lines.append(f"  queue {c.queue!r}: {c.pending} pending, {c.scheduled} scheduled, {c.claimed} claimed")
    lines.append(f"  buffer: depth {snap.depth}, in flight {snap.in_flight}; handlers running for job ids "
                 f"{list(snap.running)}")  # fmt: skip
    states: list[JobState] = [
        s for s in await source.job_states() if s.queue in queues and s.status in ("pending", "claimed")
    ]
    now = source_now(source)
    for s in states[:10]:
        due = (s.run_at - now).total_seconds()
        when = f"due in {due:.3g}s" if due > 0 else "ready"
        lines.append(f"  job {s.id} ({s.queue}): {s.status}, attempts {s.attempts}, {when}, owner {s.owner}, "
                     f"last error {s.last_error!r}")  # fmt: skip
    if len(states) > 10:
        lines.append(f"  ... and {len(states) - 10} more")
    lines.append("  (a job scheduled far ahead in real time needs a MockClock, or a larger timeout)")
    return "\n".join(lines)


async def _wait_idle(
    source: JobSource, buf: JobBuffer, rec: _Recorder, queues: Sequence[str], timeout: float, settle: float
) -> str | None:
    """Return None once idle (confirmed after ``settle``), or a description at the deadline."""
    deadline = time.monotonic() + timeout
    interval = _FIRST_CHECK
    longest = max(buf.config.poll_interval, _FIRST_CHECK)
    while True:
        snap = await _snapshot(source, buf, rec, queues)
        if snap.idle:
            calls = len(rec.calls)
            await trio.sleep(settle)
            again = await _snapshot(source, buf, rec, queues)
            if again.idle and len(rec.calls) == calls:
                return None
            snap = again
        if snap.ready and not snap.depth:
            buf.wake()  # a retry came due: no NOTIFY announces it, so nudge the poller
        if time.monotonic() >= deadline:
            return await _describe(source, snap, queues, timeout)
        wait = interval
        if _only_scheduled(snap):  # nothing can happen before the next job comes due
            wait = max(wait, await _next_due(source, queues))
        progress = rec.progress
        with trio.move_on_after(min(wait, max(deadline - time.monotonic(), 0.0) + _FIRST_CHECK)):
            await progress.wait()
        interval = _FIRST_CHECK if progress.is_set() else min(interval * 2, longest)


def _only_scheduled(snap: _Snapshot) -> bool:
    quiet = not (snap.depth or snap.in_flight or snap.running)
    return quiet and not any(c.pending or c.claimed for c in snap.counts)


async def _next_due(source: JobSource, queues: Sequence[str]) -> float:
    """Seconds until the earliest scheduled job of ``queues`` is due (0 if none is)."""
    due = [s.run_at for s in await source.job_states() if s.queue in queues and s.status == "pending"]
    return max((min(due) - source_now(source)).total_seconds(), 0.0) if due else 0.0


async def drain(
    source: JobSource,
    handler: Handler,
    *,
    config: BufferConfig | None = None,
    worker_id: str = "test",
    concurrency: int = 1,
    job_timeout: float | None = None,
    timeout: float = 30.0,
    settle: float = 0.05,
) -> DrainResult:
    """Run ``handler`` over ``source`` until it is idle, and return what happened.

    It opens a buffer (:func:`jobbuf.open_job_buffer` with ``config`` and ``worker_id``)
    and runs :func:`jobbuf.run_workers` with ``concurrency``. With ``config=None`` it uses
    ``BufferConfig`` defaults serving every queue that has work when the drain starts, with
    ``stats_interval=60`` (stats publishing is the main cost of long virtual waits; pass a
    larger ``stats_interval`` in your own config too when a drain spans virtual hours).

    **Idle** means, for the buffer's queues: no row pending, none scheduled (a retry
    waiting out its backoff counts: under a ``MockClock`` the wait is virtual), none
    claimed (by anyone); nothing buffered, nothing in flight and no handler running. It is
    checked through ``source.queue_counts()`` and the buffer, and confirmed again after
    ``settle`` seconds (trio time) with no new delivery in between. Jobs enqueued by the
    handler into the buffer's queues are drained too. Dead jobs do not count as work.

    ``job_timeout`` (trio seconds) fails a delivery that runs longer. ``timeout`` is in
    **wall-clock** seconds, so virtual waits do not use it up; when it passes the buffer is
    shut down (releasing what it holds) and :class:`DrainTimeoutError` names what was left.
    The buffer always exits before ``drain`` returns or raises. An exception the handler
    raises is recorded as a failed attempt (and retried as in production), never re-raised.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ConfigError(f"timeout={timeout!r} is invalid: pass wall-clock seconds > 0")
    if isinstance(settle, bool) or not isinstance(settle, (int, float)) or not 0 <= settle < math.inf:
        raise ConfigError(f"settle={settle!r} is invalid: pass trio seconds >= 0")
    if job_timeout is not None and (isinstance(job_timeout, bool) or not job_timeout > 0):
        raise ConfigError(f"job_timeout={job_timeout!r} is invalid: pass seconds > 0, or None for no limit")
    cfg = config if config is not None else BufferConfig(queues=await _queues_with_work(source), stats_interval=60.0)
    rec = _Recorder()
    started = trio.current_time()
    left: str | None = None
    async with open_job_buffer(source, worker_id, cfg) as buf:
        workers = partial(run_workers, buf, partial(rec.call, handler, job_timeout), concurrency=concurrency)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(workers)
            left = await _wait_idle(source, buf, rec, buf.config.queues, float(timeout), float(settle))
            nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - started
    if left is not None:
        raise DrainTimeoutError(left)
    return DrainResult(
        completed=tuple(rec.completed), failed=tuple(rec.failed), dead=await _dead(source, rec),
        discarded=buf.stats().discarded, stats=buf.stats(), elapsed=elapsed, calls=tuple(rec.calls),
    )  # fmt: skip


async def _dead(source: JobSource, rec: _Recorder) -> tuple[DeadJob, ...]:
    last: dict[int, Job] = {f.job.id: f.job for f in rec.failed}
    if not last:
        return ()
    states = await source.job_states(sorted(last))
    return tuple(DeadJob(last[s.id], s.last_error) for s in states if s.status == "dead")
