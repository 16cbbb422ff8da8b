"""The monitor's data feed: snapshots of ``<schema>.workers`` and ``<schema>.jobs``.

Plain asyncio plus asyncpg; this module never imports trio or the ``jobbuf`` package (whose
``__init__`` imports trio). Its worker query reads what ``jobbuf._sql.Statements.workers``
reads (epochs instead of timestamps); :func:`queue_counts_sql` is shared with jobbuf. The
monitor only SELECTs and LISTENs, so it runs under a read-only role.

Guarantees:

- :func:`read_snapshot` is one consistent read (one REPEATABLE READ, read-only transaction).
- :class:`Feed` never raises out of :meth:`Feed.run` for database trouble: it reports
  ``disconnected`` (or ``no schema``), retries with exponential backoff and jitter, and
  reports ``connected`` again once a snapshot succeeds.
- A LISTEN callback never raises; notifications are coalesced into one refresh.
- No DSN password reaches an update, a log line or an error message (see :func:`safe_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

import asyncpg

from .embedded import dsn_parse_error, dsn_password, redact_dsn

__all__ = [
    "RATE_KEYS",
    "STATS_DEFAULTS",
    "Feed",
    "FeedUpdate",
    "MonitorError",
    "SchemaMissingError",
    "Snapshot",
    "check_schema",
    "connect",
    "read_snapshot",
    "queue_counts_sql",
    "safe_error",
    "worker_state",
]

log = logging.getLogger("jobbuf_monitor")

_SCHEMA_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")

STATS_DEFAULTS: Final[dict[str, Any]] = {
    "worker_id": "", "instance": "", "running": False, "capacity": 0, "depth": 0,
    "in_flight": 0, "claimed": 0, "taken": 0, "offered": 0, "discarded": 0, "released": 0,
    "completed": 0, "failed": 0, "dead": 0, "quarantined": 0, "lease_lost": 0, "polls": 0,
    "empty_polls": 0, "poll_errors": 0, "last_error": None, "last_claim_at": None,
    "started_at": None, "snapshot_at": None,
}  # fmt: skip
"""Every ``BufferStats`` field with the value shown when a worker has not published it yet."""

RATE_KEYS: Final[dict[str, str]] = {
    "claims_per_s": "claimed",
    "takes_per_s": "taken",
    "discards_per_s": "discarded",
    "completions_per_s": "completed",
}
"""Derived rate -> the stats counter it is the time derivative of."""

_DB_ERRORS: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class MonitorError(Exception):
    """A problem the CLI reports as one line (its message never contains a password)."""


class SchemaMissingError(MonitorError):
    """The schema or its tables do not exist (``jobbuf migrate`` has not run)."""


def quote_schema(schema: str) -> str:
    """``schema`` double-quoted, after checking it is ``[A-Za-z_][A-Za-z0-9_]{0,47}``.

    Raises ``ValueError`` otherwise (the 47-character limit keeps ``<schema>.workers``
    within PostgreSQL's 63-byte channel names).
    """
    if _SCHEMA_RE.fullmatch(schema) is None:
        raise ValueError(
            f"schema {schema!r} is not a valid name: use 1-48 letters, digits or underscores, not starting with a digit"
        )
    return f'"{schema}"'


def safe_error(exc: BaseException, dsn: str) -> str:
    """A one-line description of ``exc`` with the DSN's password removed wherever it appears."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    secret = dsn_password(dsn)
    for form in {secret, unquote(secret)} if secret else ():
        if form:
            text = text.replace(form, "***")
    return redact_dsn(text)


def worker_state(age: float, config: dict[str, Any]) -> str:
    """``gone`` past the lease, ``live`` within 3 x stats_interval, else ``stale``."""
    lease = _num(config.get("lease"), 30.0)
    interval = _num(config.get("stats_interval"), 1.0)
    if age > lease:
        return "gone"
    return "live" if age <= 3 * interval else "stale"


def _num(value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value)


def queue_counts_sql(s: str) -> str:
    """Counts per queue and status in schema ``s`` (already quoted), for one queue (``$1``)
    or all (``$1`` NULL). The only copy: jobbuf's ``Statements.queue_counts`` uses it too
    (jobbuf may import the monitor package; the monitor must not import jobbuf)."""
    return f"""
        SELECT queue,
            count(*) FILTER (WHERE status = 'pending' AND run_at <= now()) AS pending,
            count(*) FILTER (WHERE status = 'pending' AND run_at > now())  AS scheduled,
            count(*) FILTER (WHERE status = 'claimed') AS claimed,
            count(*) FILTER (WHERE status = 'dead')    AS dead,
            count(*) FILTER (WHERE status = 'done')    AS done,
            extract(epoch FROM now() - min(run_at)
                FILTER (WHERE status = 'pending' AND run_at <= now()))::float8
                AS oldest_pending_age
        FROM {s}.jobs WHERE ($1::text IS NULL OR queue = $1) GROUP BY queue ORDER BY queue"""


def _workers_sql(s: str) -> str:
    # Reads what jobbuf._sql.Statements.workers reads, with epochs for display; jsonb comes back as text.
    return f"""
        SELECT instance, worker_id, host, pid, queues,
            extract(epoch FROM started_at)::float8 AS started_epoch,
            extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age,
            extract(epoch FROM now())::float8 AS now_epoch,
            config::text AS config, stats::text AS stats
        FROM {s}.workers WHERE ($1::text IS NULL OR $1 = ANY(queues))
        ORDER BY worker_id, started_at"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One read of the schema. ``rates`` is empty until a previous snapshot exists."""

    workers: list[dict[str, Any]]
    queues: list[dict[str, Any]]
    taken_at: float = field(default_factory=time.monotonic)
    rates: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """``{"workers": [...], "queues": [...]}``, the ``--once --json`` document."""
        return {"workers": self.workers, "queues": self.queues}

    def total(self, key: str) -> float:
        """Sum of a numeric stats field over live and stale workers (``gone`` ones excluded)."""
        return sum(float(w.get(key) or 0) for w in self.workers if w["state"] != "gone")


def _worker(row: asyncpg.Record) -> dict[str, Any]:
    stats = json.loads(row["stats"]) if row["stats"] else {}
    config = json.loads(row["config"]) if row["config"] else {}
    age = max(0.0, float(row["heartbeat_age"]))
    worker = dict(STATS_DEFAULTS)
    worker.update(stats if isinstance(stats, dict) else {})
    worker.update(
        worker_id=row["worker_id"],
        instance=row["instance"],
        host=row["host"],
        pid=row["pid"],
        queues=list(row["queues"]),
        state=worker_state(age, config if isinstance(config, dict) else {}),
        heartbeat_age=round(age, 3),
        uptime=round(max(0.0, row["now_epoch"] - row["started_epoch"]), 3),
        config=config,
    )
    if worker["started_at"] is None:
        worker["started_at"] = row["started_epoch"]
    return worker


async def check_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Raise :class:`SchemaMissingError` unless ``<schema>.jobs`` and ``.workers`` exist."""
    s = quote_schema(schema)
    found = await conn.fetchrow(
        "SELECT to_regclass($1) IS NOT NULL AS jobs, to_regclass($2) IS NOT NULL AS workers",
        f"{s}.jobs",
        f"{s}.workers",
    )
    if found is None or not (found["jobs"] and found["workers"]):
        raise SchemaMissingError(f'schema "{schema}" not found')


async def read_snapshot(conn: asyncpg.Connection, schema: str, queue: str | None = None) -> Snapshot:
    """Read workers and queue counts in one read-only snapshot; ``queue`` limits both."""
    s = quote_schema(schema)
    await check_schema(conn, schema)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(_workers_sql(s), queue)
        counts = await conn.fetch(queue_counts_sql(s), queue)
    queues = [dict(r) for r in counts]
    for q in queues:
        if q["oldest_pending_age"] is not None:
            q["oldest_pending_age"] = round(q["oldest_pending_age"], 3)
    return Snapshot(workers=[_worker(r) for r in rows], queues=queues)


async def connect(dsn: str, connect_timeout: float = 5.0) -> asyncpg.Connection:
    """Open a connection or raise :class:`MonitorError` with a redacted one-line reason."""
    try:
        return await asyncpg.connect(dsn, timeout=connect_timeout)
    except ValueError as exc:  # asyncpg could not parse the DSN (ClientConfigurationError is one too)
        raise MonitorError(f"dsn {redact_dsn(dsn)!r} is invalid: {dsn_parse_error(exc, dsn)}") from None
    except _DB_ERRORS as exc:
        raise MonitorError(f"cannot connect to {redact_dsn(dsn)}: {safe_error(exc, dsn)}") from None


def with_rates(current: Snapshot, previous: Snapshot | None) -> Snapshot:
    """``current`` with per-worker and total rates from counter deltas since ``previous``.

    The interval is the one between the buffer's own snapshots (``snapshot_at``), so a
    refresh that reads the same published snapshot twice keeps the last rate instead of
    reporting zero. Only instances present in both snapshots count; a counter that went
    down (impossible for one instance, but the row may be rewritten) contributes zero.
    """
    totals = dict.fromkeys(RATE_KEYS, 0.0)
    before = {w["instance"]: w for w in previous.workers} if previous else {}
    read_dt = current.taken_at - previous.taken_at if previous else 0.0
    for worker in current.workers:
        old = before.get(worker["instance"])
        dt = read_dt
        if old is not None and worker.get("snapshot_at") and old.get("snapshot_at"):
            dt = float(worker["snapshot_at"]) - float(old["snapshot_at"])
        for rate, counter in RATE_KEYS.items():
            value = 0.0
            if old is not None and dt > 0:
                value = max(0.0, (int(worker[counter] or 0) - int(old[counter] or 0)) / dt)
            elif old is not None:
                value = float(old.get(rate) or 0.0)  # same snapshot read again
            worker[rate] = round(value, 2)
            totals[rate] += value
    rates = {k: round(v, 2) for k, v in totals.items()} if previous else {}
    return Snapshot(current.workers, current.queues, current.taken_at, rates)


@dataclass(frozen=True, slots=True)
class FeedUpdate:
    """What the feed reports: its state, and the latest snapshot when ``connected``."""

    state: str  # "connecting" | "connected" | "disconnected" | "no schema"
    snapshot: Snapshot | None = None
    error: str | None = None


def log_loop_exceptions(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Loop exception handler: log (redaction is the caller's job upstream) and carry on."""
    log.warning("event loop: %s", context.get("message", "unhandled exception"), exc_info=context.get("exception"))


class Feed:
    """Streams :class:`FeedUpdate` s to ``on_update`` until cancelled.

    Refreshes at once (coalesced, at most every ``min_gap`` seconds) on NOTIFY on
    ``"<schema>.workers"`` or ``"<schema>.jobs"``, and otherwise every ``refresh`` seconds.
    ``on_update`` is called from the loop running :meth:`run`; it must not block.
    """

    def __init__(
        self,
        dsn: str,
        schema: str,
        on_update: Callable[[FeedUpdate], None],
        *,
        queue: str | None = None,
        refresh: float = 1.0,
        min_gap: float = 0.2,
        max_backoff: float = 10.0,
    ) -> None:
        quote_schema(schema)
        self.dsn, self.schema, self.queue = dsn, schema, queue
        self.refresh, self.min_gap, self.max_backoff = refresh, min_gap, max_backoff
        self._on_update = on_update
        self._wake = asyncio.Event()
        self._previous: Snapshot | None = None
        self._served = False  # whether the current session produced a snapshot
        self.state = "connecting"

    def wake(self) -> None:
        """Ask for a refresh now (coalesced with any pending one). Never raises."""
        self._wake.set()

    def _notified(self, *_args: object) -> None:
        # asyncpg runs this synchronously on the loop; an exception here would reach the loop's
        # exception handler, so swallow-and-log is the one correct behaviour.
        try:
            self._wake.set()
        except Exception:  # pragma: no cover - Event.set cannot fail in practice
            log.exception("LISTEN callback failed")

    def _emit(self, update: FeedUpdate) -> None:
        self.state = update.state
        try:
            self._on_update(update)
        except Exception:
            log.exception("monitor update handler failed")

    async def run(self) -> None:
        """Connect, stream, and on any database failure back off (with jitter) and reconnect."""
        asyncio.get_running_loop().set_exception_handler(log_loop_exceptions)
        failures = 0
        while True:
            self._served = False
            try:
                await self._session()
            except SchemaMissingError as exc:
                self._emit(FeedUpdate("no schema", error=f"{exc}: run jobbuf migrate"))
            except MonitorError as exc:
                self._emit(FeedUpdate("disconnected", error=str(exc)))
            except _DB_ERRORS as exc:
                self._emit(FeedUpdate("disconnected", error=safe_error(exc, self.dsn)))
            failures = 1 if self._served else failures + 1
            delay = min(self.max_backoff, 0.25 * 2 ** min(failures, 8))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _session(self) -> None:
        conn = await connect(self.dsn)
        lost = asyncio.Event()
        try:

            def on_lost(_conn: object) -> None:
                lost.set()
                self._wake.set()

            conn.add_termination_listener(on_lost)
            for channel in (f"{self.schema}.workers", f"{self.schema}.jobs"):
                await conn.add_listener(channel, self._notified)
            await self._stream(conn, lost)
        finally:
            # No graceful close: the monitor only reads, there is nothing to flush, and an
            # awaited close would have to be shielded from the cancellation that got us here.
            conn.terminate()

    async def _stream(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        while True:
            self._wake.clear()
            snap = await asyncio.wait_for(read_snapshot(conn, self.schema, self.queue), max(5.0, 2 * self.refresh))
            self._previous = with_rates(snap, self._previous)
            self._served = True
            self._emit(FeedUpdate("connected", self._previous))
            started = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh)
            if lost.is_set() or conn.is_closed():
                raise MonitorError("connection to the database was lost")
            await asyncio.sleep(max(0.0, self.min_gap - (time.monotonic() - started)))
