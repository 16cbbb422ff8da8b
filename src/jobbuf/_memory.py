"""``MemoryJobSource``: the :class:`JobSource` contract in memory, for tests and demos.

It mirrors the PostgreSQL source statement for statement (see ``_sql.py``): the same claim
order, rescue, release, ack and requeue rules, the same status values. Guarantees:

- **Virtual time.** All time comes from ``trio.current_time()``, so it runs under
  ``trio.testing.MockClock(autojump_threshold=0)``: a one-hour backoff passes in
  milliseconds. Datetimes it exposes are timezone-aware UTC, mapped from trio time through
  an offset recorded on first use (so one instance belongs to one ``trio.run``).
- **Cancellation-atomic.** Every async method checkpoints first (like real I/O) and then
  changes state synchronously: cancelled, it changed either everything or nothing.
- **Copies.** Payloads are stored as JSON text and decoded at claim, so a claimed payload
  never aliases the enqueued object.
- **Faults on demand.** :meth:`MemoryJobSource.fail_next` makes the next call(s) of a method
  raise, before (or, with ``after=True``, after) changing anything.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from ._config import check_identifier
from ._job import Claim, Job
from ._source import Ack, AckOutcome, ClaimResult, JobState, QueueCounts, WorkerInfo, check_enqueue, encode_payload

__all__ = ["MemoryJobSource", "MemoryWorker"]

logger = logging.getLogger("jobbuf.memory")

_RESCUED_DEAD = "lease expired on the last attempt (holder presumed crashed)"
_METHODS = frozenset(
    {"enqueue", "enqueue_many", "enqueue_raw", "claim", "release", "release_owner", "ack"}
    | {"heartbeat", "deregister", "job_states", "queue_counts", "requeue_dead"}
)


@dataclass(frozen=True, slots=True)
class MemoryWorker:
    """A registered buffer, as :meth:`MemoryJobSource.workers` returns it."""

    info: WorkerInfo
    stats: dict[str, Any]
    heartbeat_at: datetime


@dataclass(slots=True)
class _Row:
    id: int
    queue: str
    payload: str  # JSON text, decoded at claim
    priority: int
    max_attempts: int | None  # None: the claiming buffer's default applies
    run_at: datetime
    created_at: datetime
    status: str = "pending"
    attempts: int = 0
    owner: str | None = None
    worker_id: str | None = None
    token: int | None = None
    lease_expires_at: datetime | None = None
    last_error: str | None = None

    def clear_claim(self) -> None:
        self.owner = self.worker_id = self.token = self.lease_expires_at = None

    def limit(self, default_max_attempts: int) -> int:
        return default_max_attempts if self.max_attempts is None else self.max_attempts


@dataclass(slots=True)
class _Fault:
    exc: BaseException
    times: int
    after: bool


def _claim_order(row: _Row) -> tuple[int, datetime, int]:
    return (-row.priority, row.run_at, row.id)


class MemoryJobSource:
    """A :class:`JobSource` that keeps its jobs in memory, with PostgreSQL's semantics.

    ``keep_completed=True`` keeps completed rows with status ``done`` instead of deleting
    them. Enqueue arguments are checked as PostgreSQL's are (``check_enqueue``): a naive
    ``run_at`` is a ``ConfigError`` (ambiguous; asyncpg would read it as local time). Wake-ups
    (:meth:`listen`) fire synchronously, once per queue for each enqueue, and each release
    or requeue call that changed rows, as PostgreSQL NOTIFYs; acks send none. An instance
    belongs to one ``trio.run``.
    """

    def __init__(self, *, keep_completed: bool = False) -> None:
        self.keep_completed = keep_completed
        self._rows: dict[int, _Row] = {}
        self._next_id = 1
        self._workers: dict[str, MemoryWorker] = {}
        self._listeners: dict[int, tuple[frozenset[str], Callable[[], None]]] = {}
        self._next_listener = 0
        self._faults: dict[str, _Fault] = {}
        self._origin: tuple[datetime, float] | None = None

    # -- time and faults -----------------------------------------------------------------
    def now(self) -> datetime:
        """The source's current time: aware UTC, advancing with ``trio.current_time()``."""
        t = trio.current_time()
        if self._origin is None:
            self._origin = (datetime.now(UTC), t)
        wall, t0 = self._origin
        return wall + timedelta(seconds=t - t0)

    def fail_next(self, method: str, exc: BaseException, *, times: int = 1, after: bool = False) -> None:
        """Make the next ``times`` calls of ``method`` raise ``exc``.

        By default the call raises before changing anything (a failed round trip). With
        ``after=True`` it applies its change and then raises, like a statement that
        committed but whose reply was lost. Replaces any fault already set for ``method``.
        """
        if method not in _METHODS:
            raise ValueError(f"method={method!r} is not an async method of this source; use one of {sorted(_METHODS)}")
        if times < 1:
            raise ValueError(f"times={times!r} is invalid: it must be >= 1")
        self._faults[method] = _Fault(exc, times, after)

    def _fault(self, method: str, *, after: bool) -> None:
        fault = self._faults.get(method)
        if fault is None or fault.after != after:
            return
        fault.times -= 1
        if fault.times == 0:
            del self._faults[method]
        raise fault.exc

    async def _enter(self, method: str) -> datetime:
        # The only await of every method: cancellation lands here, before any change.
        await trio.lowlevel.checkpoint()
        self._fault(method, after=False)
        return self.now()

    # -- producers -----------------------------------------------------------------------
    async def enqueue(
        self,
        queue: str,
        payload: Any,
        *,
        priority: int = 0,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> int:
        """Add one job; return its id. A non-JSON payload is a ``TypeError``; nothing is stored."""
        check_enqueue(queue, priority, run_at, max_attempts)  # first, as PostgresJobSource does
        text = encode_payload(payload)
        return (await self._insert("enqueue", queue, [text], priority, run_at, max_attempts))[0]

    async def enqueue_many(
        self,
        queue: str,
        payloads: Iterable[Any],
        *,
        priority: int = 0,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> list[int]:
        """Add jobs atomically (all or none) with one wake-up; return ids in payload order."""
        check_enqueue(queue, priority, run_at, max_attempts)
        texts = [encode_payload(p) for p in payloads]
        return await self._insert("enqueue_many", queue, texts, priority, run_at, max_attempts)

    async def enqueue_raw(self, queue: str, text: str, *, priority: int = 0, max_attempts: int | None = None) -> int:
        """Test-only: store ``text`` as the payload unchecked (e.g. undecodable JSON), to
        exercise quarantine at claim."""
        check_enqueue(queue, priority, None, max_attempts)
        return (await self._insert("enqueue_raw", queue, [text], priority, None, max_attempts))[0]

    async def _insert(
        self,
        method: str,
        queue: str,
        texts: list[str],
        priority: int,
        run_at: datetime | None,
        max_attempts: int | None,
    ) -> list[int]:
        due = None if run_at is None else run_at.astimezone(UTC)
        now = await self._enter(method)
        ids = list(range(self._next_id, self._next_id + len(texts)))
        self._next_id += len(texts)
        for id_, text in zip(ids, texts, strict=True):
            self._rows[id_] = _Row(id_, queue, text, priority, max_attempts, due or now, now)
        if ids:
            self._notify(queue)
        self._fault(method, after=True)
        return ids

    # -- the buffer's hot path -----------------------------------------------------------
    async def claim(
        self,
        *,
        owner: str,
        worker_id: str,
        queues: tuple[str, ...],
        limit: int,
        lease: float,
        default_max_attempts: int,
    ) -> ClaimResult:
        """Claim up to ``limit`` jobs among ready pending rows and claimed rows whose lease
        expired (at most ``limit`` of those, oldest lease first), in priority DESC, run_at,
        id order. A rescued row with no attempts left
        becomes dead (``ClaimResult.dead``); a row whose payload does not decode becomes dead
        with the decode error (``ClaimResult.quarantined``). Jobs come back in claim order."""
        wanted = frozenset(check_identifier("queue", q) for q in queues)
        if limit < 0:
            raise ValueError(f"limit={limit!r} is invalid: it must be >= 0")
        lease_for = timedelta(seconds=lease)
        now = await self._enter("claim")
        rows = [r for r in self._rows.values() if r.queue in wanted]
        expired = sorted(
            (r for r in rows if r.status == "claimed" and r.lease_expires_at is not None and r.lease_expires_at < now),
            key=lambda r: (r.lease_expires_at or now, r.id),
        )[:limit]
        ready = sorted((r for r in rows if r.status == "pending" and r.run_at <= now), key=_claim_order)
        token = secrets.randbits(63)
        taken: list[tuple[_Row, Any]] = []
        dead = quarantined = 0
        for row in sorted(expired + ready[:limit], key=_claim_order)[:limit]:
            if row.status == "claimed" and row.attempts >= row.limit(default_max_attempts):
                row.status, row.last_error = "dead", _RESCUED_DEAD
                row.clear_claim()
                dead += 1
                continue
            row.status, row.attempts = "claimed", row.attempts + 1
            row.owner, row.worker_id, row.token = owner, worker_id, token
            row.lease_expires_at = now + lease_for
            try:
                payload = json.loads(row.payload)
            except (ValueError, RecursionError) as exc:
                row.status, row.last_error = "dead", f"payload is not JSON: {exc}"  # as PostgresJobSource words it
                row.clear_claim()
                quarantined += 1
                continue
            taken.append((row, payload))
        taken.sort(key=lambda pair: _claim_order(pair[0]))
        jobs = [self._job(row, payload, default_max_attempts) for row, payload in taken]
        self._fault("claim", after=True)
        return ClaimResult(jobs, dead=dead, quarantined=quarantined)

    @staticmethod
    def _job(row: _Row, payload: Any, default_max_attempts: int) -> Job:
        assert row.owner is not None and row.token is not None
        return Job(
            id=row.id, queue=row.queue, payload=payload, priority=row.priority, attempts=row.attempts,
            max_attempts=row.limit(default_max_attempts), run_at=row.run_at, created_at=row.created_at,
            claim=Claim(row.owner, row.token),
        )  # fmt: skip

    def _match(self, job: Job) -> _Row | None:
        """The row ``job`` still holds: claimed under exactly its owner and token."""
        row = self._rows.get(job.id)
        claim = job.claim
        if row is None or claim is None or row.status != "claimed":
            return None
        return row if (row.owner, row.token) == (claim.owner, claim.token) else None

    @staticmethod
    def _release(row: _Row) -> None:
        row.status, row.attempts = "pending", max(row.attempts - 1, 0)
        row.clear_claim()

    async def release(self, jobs: Sequence[Job]) -> list[int]:
        """Put jobs back to pending (owner cleared, attempt given back) where their claim
        still matches, and wake listeners of their queues (one wake-up per queue, as a
        PostgreSQL release sends); return the ids released, in the given order."""
        await self._enter("release")
        released = []
        for job in jobs:
            row = self._match(job)
            if row is not None:
                self._release(row)
                released.append(row)
        self._notify_released(released)
        self._fault("release", after=True)
        return [row.id for row in released]

    async def release_owner(self, owner: str, keep: Collection[int] = ()) -> list[int]:
        """Release every row claimed by ``owner`` except ids in ``keep`` and wake listeners of
        their queues; return their ids in id order."""
        kept = frozenset(keep)
        await self._enter("release_owner")
        rows = [r for r in self._rows.values() if r.status == "claimed" and r.owner == owner and r.id not in kept]
        for row in rows:
            self._release(row)
        self._notify_released(rows)
        self._fault("release_owner", after=True)
        return sorted(r.id for r in rows)

    async def ack(self, acks: Sequence[Ack], *, default_max_attempts: int) -> list[AckOutcome]:
        """Apply acks in order, atomically; one outcome per ack. A completion deletes the
        row (or marks it ``done`` with ``keep_completed``); a failure makes it ``dead`` when
        ``attempts >= max_attempts`` (``default_max_attempts`` if stored as None), else
        ``pending`` at ``now + retry_in``. An ack whose claim no longer matches is ``lost``
        and changes nothing, except that, as in PostgreSQL, a completion whose row is gone
        (or ``done``) is reported ``done``: after a lost reply the retried ack must not look
        like a lost lease."""
        delays = [timedelta(seconds=a.retry_in) for a in acks]  # validate before any change
        now = await self._enter("ack")
        run_ats = [now + delay for delay in delays]  # an overflow, too
        outcomes: list[AckOutcome] = []
        for a, run_at in zip(acks, run_ats, strict=True):
            row = self._match(a.job)
            if row is None:
                gone = a.error is None and (a.job.id not in self._rows or self._rows[a.job.id].status == "done")
                outcomes.append("done" if gone else "lost")
            elif a.error is None:
                if self.keep_completed:  # worker_id kept as a record, as in PostgreSQL
                    row.status, row.owner, row.token, row.lease_expires_at = "done", None, None, None
                else:
                    del self._rows[row.id]
                outcomes.append("done")
            else:
                dead = row.attempts >= row.limit(default_max_attempts)
                row.status, row.run_at, row.last_error = ("dead" if dead else "pending"), run_at, a.error
                row.clear_claim()
                outcomes.append("dead" if dead else "retry")
        self._fault("ack", after=True)
        return outcomes

    # -- liveness ------------------------------------------------------------------------
    async def heartbeat(
        self, worker: WorkerInfo, held: Sequence[Job], lease: float | None, stats: dict[str, Any]
    ) -> None:
        """Upsert ``worker`` with ``stats`` (an existing row keeps its info and gets the new
        stats and heartbeat time) and, when ``lease`` is set, extend every held job whose
        claim still matches to ``now + lease``. ``stats`` must be strict JSON, as jsonb requires
        (``TypeError``, or ``ValueError`` for NaN)."""
        copy = json.loads(json.dumps(stats, allow_nan=False))
        lease_for = None if lease is None else timedelta(seconds=lease)
        now = await self._enter("heartbeat")
        old = self._workers.get(worker.instance)
        self._workers[worker.instance] = MemoryWorker(worker if old is None else old.info, copy, now)
        if lease_for is not None:
            for job in held:
                row = self._match(job)
                if row is not None:
                    row.lease_expires_at = now + lease_for
        self._fault("heartbeat", after=True)

    async def deregister(self, instance: str) -> None:
        """Remove the worker's registration; unknown instances are ignored."""
        await self._enter("deregister")
        self._workers.pop(instance, None)
        self._fault("deregister", after=True)

    def workers(self) -> list[MemoryWorker]:
        """Registered workers, ordered by worker id then start time (for tests)."""
        return sorted(self._workers.values(), key=lambda w: (w.info.worker_id, w.info.started_at))

    def listen(self, queues: Collection[str], callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` synchronously once per enqueue call into one of ``queues``, and,
        for each release or requeue call, once per one of them it made jobs pending in.
        An exception from it is logged, never raised into the enqueue. Returns an
        idempotent unsubscribe function."""
        wanted = frozenset(check_identifier("queue", q) for q in queues)
        key = self._next_listener
        self._next_listener += 1
        self._listeners[key] = (wanted, callback)

        def unsubscribe() -> None:
            self._listeners.pop(key, None)

        return unsubscribe

    def _notify_released(self, rows: Sequence[_Row]) -> None:
        for queue in sorted({row.queue for row in rows}):
            self._notify(queue)

    def _notify(self, queue: str) -> None:
        for wanted, callback in list(self._listeners.values()):
            if queue in wanted:
                try:
                    callback()
                except Exception:  # a wake-up is a hint: never fail the enqueue for it
                    logger.exception("jobbuf: a listen() callback for queue %r raised", queue)

    # -- operators -----------------------------------------------------------------------
    async def job_states(self, ids: Sequence[int] | None = None) -> list[JobState]:
        """The stored rows for ``ids`` (all when None), by id; deleted rows are absent."""
        await self._enter("job_states")
        wanted = self._rows.keys() if ids is None else {i for i in ids if i in self._rows}
        states = [self._state(self._rows[i]) for i in sorted(wanted)]
        self._fault("job_states", after=True)
        return states

    @staticmethod
    def _state(row: _Row) -> JobState:
        return JobState(
            id=row.id, queue=row.queue, status=row.status, attempts=row.attempts, max_attempts=row.max_attempts,
            priority=row.priority, run_at=row.run_at, owner=row.owner, worker_id=row.worker_id,
            last_error=row.last_error,
        )  # fmt: skip

    async def queue_counts(self) -> list[QueueCounts]:
        """Counts per queue, by queue name; ``oldest_pending_age`` in seconds of the
        earliest ``run_at`` among ready pending rows."""
        now = await self._enter("queue_counts")
        counts: dict[str, dict[str, int]] = {}
        oldest: dict[str, datetime] = {}
        for row in self._rows.values():
            c = counts.setdefault(row.queue, {})
            key = "scheduled" if row.status == "pending" and row.run_at > now else row.status
            c[key] = c.get(key, 0) + 1
            if key == "pending" and (row.queue not in oldest or row.run_at < oldest[row.queue]):
                oldest[row.queue] = row.run_at
        self._fault("queue_counts", after=True)
        result = []
        for q, c in sorted(counts.items()):
            age = (now - oldest[q]).total_seconds() if q in oldest else None
            get = c.get
            result.append(QueueCounts(q, get("pending", 0), get("scheduled", 0), get("claimed", 0), get("dead", 0),
                                      get("done", 0), age))  # fmt: skip
        return result

    async def requeue_dead(self, queue: str, ids: Sequence[int] | None = None) -> list[int]:
        """Put dead jobs of ``queue`` (only ``ids`` when given) back to pending now, with
        attempts reset and ``last_error`` kept, waking its listeners; return their ids in
        id order."""
        check_identifier("queue", queue)
        wanted = None if ids is None else frozenset(ids)
        now = await self._enter("requeue_dead")
        rows = [r for r in self._rows.values() if r.status == "dead" and r.queue == queue]
        rows = [r for r in rows if wanted is None or r.id in wanted]
        for row in rows:
            row.status, row.attempts, row.run_at = "pending", 0, now
        self._notify_released(rows)
        self._fault("requeue_dead", after=True)
        return sorted(r.id for r in rows)
