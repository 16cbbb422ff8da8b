"""Enqueue from plain dicts, and assert on what a source holds, with messages that show the row.

Every assertion reads the source through the :class:`jobbuf.JobSource` Protocol
(``job_states`` and ``queue_counts``), so it works the same on ``MemoryJobSource``,
``PostgresJobSource`` and any third-party source. A failure raises ``AssertionError``
whose message shows the stored row(s); a pass returns what was checked, for more asserts.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from .._config import MAX_DELAY
from .._errors import ConfigError
from .._source import JobSource, JobState, QueueCounts, check_enqueue, encode_payload
from .helpers import source_now

__all__ = ["JOB_SPEC_KEYS", "assert_attempts", "assert_completed", "assert_dead", "assert_queue_empty",
           "enqueue_jobs", "format_job_state"]  # fmt: skip

JOB_SPEC_KEYS = frozenset({"queue", "payload", "priority", "run_at", "run_in", "max_attempts"})
"""Keys :func:`enqueue_jobs` accepts in each job dict."""

_DELETED_HINT = (
    "completed rows are deleted by default: use MemoryJobSource(keep_completed=True) (or keep_completed=True "
    "on open_postgres_source) to keep them, or count handler calls with DrainResult.attempts(job_id)"
)


def format_job_state(state: JobState) -> str:
    """One readable line for a stored row (used in failure messages)."""
    return (
        f"job {state.id} in queue {state.queue!r}: status={state.status!r} attempts={state.attempts} "
        f"max_attempts={state.max_attempts} priority={state.priority} run_at={state.run_at.isoformat()} "
        f"owner={state.owner!r} worker_id={state.worker_id!r} last_error={state.last_error!r}"
    )


def _spec(index: int, spec: object, now: datetime | None) -> tuple[str, Any, int, datetime | None, int | None]:
    if not isinstance(spec, Mapping):
        raise TypeError(f"jobs[{index}]={spec!r} is invalid: each job must be a dict like {{'payload': ...}}")
    unknown = sorted(str(k) for k in spec if k not in JOB_SPEC_KEYS)
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, JOB_SPEC_KEYS, 1)) else
                 repr(k) for k in unknown]  # fmt: skip
        raise TypeError(f"jobs[{index}] has unknown key(s) {', '.join(hints)}; allowed: {sorted(JOB_SPEC_KEYS)}")
    if "payload" not in spec:
        raise TypeError(f"jobs[{index}] has no 'payload' key; every job needs one (use None for no data)")
    if "run_at" in spec and "run_in" in spec:
        raise TypeError(f"jobs[{index}] has both 'run_at' and 'run_in'; give one of them")
    queue, priority = spec.get("queue", "default"), spec.get("priority", 0)
    run_at, max_attempts = spec.get("run_at"), spec.get("max_attempts")
    if "run_in" in spec:
        run_in = spec["run_in"]
        if isinstance(run_in, bool) or not isinstance(run_in, (int, float)):
            raise TypeError(f"jobs[{index}]['run_in']={run_in!r} is invalid: pass seconds from now")
        if not -MAX_DELAY <= run_in <= MAX_DELAY:
            raise ConfigError(f"jobs[{index}]['run_in']={run_in!r} is invalid: pass at most 100 years either way")
        assert now is not None
        run_at = now + timedelta(seconds=run_in)
    check_enqueue(queue, priority, run_at, max_attempts)
    encode_payload(spec["payload"])  # TypeError now, before anything is written
    return queue, spec["payload"], priority, run_at, max_attempts


async def enqueue_jobs(source: JobSource, jobs: Iterable[Mapping[str, Any]]) -> list[int]:
    """Enqueue jobs described as plain dicts; return their ids in the given order.

    Keys: ``payload`` (required, JSON-serialisable), ``queue`` (default ``"default"``),
    ``priority`` (0), ``run_at`` (aware datetime) or ``run_in`` (seconds from the source's
    now; virtual under a ``MockClock`` with ``MemoryJobSource``), ``max_attempts``.
    Every dict is validated before anything is enqueued: an unknown or missing key is a
    ``TypeError`` naming the job's index (and the likely intended key), a bad value the
    source's ``ConfigError`` or ``TypeError``. Jobs are enqueued one by one, in order.
    """
    items = list(jobs)
    now = source_now(source) if any(isinstance(j, Mapping) and "run_in" in j for j in items) else None
    specs = [_spec(i, item, now) for i, item in enumerate(items)]
    ids = []
    for queue, payload, priority, run_at, max_attempts in specs:
        ids.append(await source.enqueue(queue, payload, priority=priority, run_at=run_at, max_attempts=max_attempts))
    return ids


async def _row(source: JobSource, job_id: int) -> JobState | None:
    states = await source.job_states([job_id])
    return states[0] if states else None


async def assert_queue_empty(source: JobSource, queue: str, *, allow_dead: bool = False) -> None:
    """Assert ``queue`` has no pending, scheduled, claimed or (unless ``allow_dead``) dead
    rows. Completed rows kept as ``done`` are ignored. The message lists the rows left."""
    counts = {c.queue: c for c in await source.queue_counts()}.get(queue, QueueCounts(queue))
    left = counts.pending + counts.scheduled + counts.claimed + (0 if allow_dead else counts.dead)
    if not left:
        return
    rows = [s for s in await source.job_states() if s.queue == queue and s.status != "done"]
    rows = [s for s in rows if not (allow_dead and s.status == "dead")]
    shown = "\n".join(f"  {format_job_state(s)}" for s in rows[:20])
    more = f"\n  ... and {len(rows) - 20} more" if len(rows) > 20 else ""
    raise AssertionError(
        f"queue {queue!r} is not empty: {counts.pending} pending, {counts.scheduled} scheduled, "
        f"{counts.claimed} claimed, {counts.dead} dead\n{shown}{more}"
    )


async def assert_attempts(source: JobSource, job_id: int, n: int) -> JobState:
    """Assert job ``job_id`` is stored with ``attempts == n`` (deliveries, including one
    in progress; a release gives its attempt back). Returns the row."""
    state = await _row(source, job_id)
    if state is None:
        raise AssertionError(f"job {job_id} has no row, so its attempts cannot be read; {_DELETED_HINT}")
    if state.attempts != n:
        raise AssertionError(f"job {job_id} has attempts={state.attempts}, expected {n}\n  {format_job_state(state)}")
    return state


async def assert_dead(source: JobSource, job_id: int, *, error_contains: str | None = None) -> JobState:
    """Assert job ``job_id`` is dead and, when ``error_contains`` is given, that its last
    error contains that text. Returns the row."""
    state = await _row(source, job_id)
    if state is None:
        raise AssertionError(f"job {job_id} is not dead: it has no row (completed and deleted, or never enqueued)")
    if state.status != "dead":
        raise AssertionError(f"job {job_id} is {state.status!r}, expected 'dead'\n  {format_job_state(state)}")
    if error_contains is not None and error_contains not in (state.last_error or ""):
        raise AssertionError(
            f"job {job_id} is dead but its last error does not contain {error_contains!r}\n  {format_job_state(state)}"
        )
    return state


async def assert_completed(source: JobSource, job_id: int) -> JobState | None:
    """Assert job ``job_id`` was completed: its row is gone (deleted on completion) or kept
    with status ``done``. Returns the ``done`` row, or None when it was deleted.

    A row that was never enqueued is absent too: check ids you got from an enqueue."""
    state = await _row(source, job_id)
    if state is not None and state.status != "done":
        raise AssertionError(f"job {job_id} is {state.status!r}, expected completed\n  {format_job_state(state)}")
    return state
