"""``PostgresJobSource``: jobs in PostgreSQL, reached with asyncpg through trio-asyncio.

Every logical operation is one asyncio coroutine on a connection handed out on the trio
side (``_connections``), stepped from the calling trio task (``_aio.run_aio``): the
transaction and queries run together inside it, and a connection whose operation was
interrupted is terminated, never reused.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import trio

from jobbuf_monitor.embedded import copyable_dsn, redact_dsn

from . import _jitter
from ._config import check_identifier
from ._connections import Connections
from ._errors import DatabaseUnavailableError, SchemaError
from ._job import Claim, Job, claimed_job
from ._listener import Listener
from ._source import (
    Ack,
    AckOutcome,
    ClaimResult,
    JobState,
    QueueCounts,
    WorkerInfo,
    check_enqueue,
    decode_payload,
    encode_payload,
)
from ._sql import MIGRATIONS, SCHEMA_VERSION, Statements

__all__ = ["TRANSIENT", "PostgresJobSource", "reason"]

log = logging.getLogger("jobbuf.postgres")
T = TypeVar("T")

# Errors that mean "the database or the connection is gone for now": retried where the
# operation allows, otherwise reported as DatabaseUnavailableError.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,  # the server's or the role's connection limit, for now
    asyncpg.exceptions.OperatorInterventionError,
)
MISSING_SCHEMA = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError)


class PostgresJobSource:
    """A :class:`~jobbuf.JobSource` on one PostgreSQL schema. Open it with :func:`open_postgres_source`.

    Enqueues and acks retry for up to ``retry_timeout`` seconds while the database is
    unreachable, then raise :class:`DatabaseUnavailableError`; claims are not retried here
    (the buffer's poller backs off). One attempt that gets no answer at all is abandoned
    after ``operation_timeout`` seconds, so the longest wait is about the sum of the two.
    No message ever contains the DSN's password.
    """

    def __init__(
        self,
        durable: Connections,
        relaxed: Connections,
        dsn: str,
        sql: Statements,
        *,
        keep_completed: bool,
        retry_timeout: float,
        operation_timeout: float = 30.0,
        application_name: str | None = None,
    ) -> None:
        self._durable = durable
        self._relaxed = relaxed
        self._dsn = dsn
        self.dsn = redact_dsn(dsn)
        """The DSN with any password replaced by ``***``."""
        self.schema = sql.schema
        self._sql = sql
        self._keep_completed = keep_completed
        self._retry_timeout = retry_timeout
        self._operation_timeout = operation_timeout
        self._ack_sql = sql.ack(keep_completed)
        self._complete_sql = sql.complete(keep_completed)
        self._existing_sql, self._failed_sql = sql.existing(), sql.failed()
        self._claim_sql = {True: sql.claim(single_queue=True), False: sql.claim(single_queue=False)}
        self._quarantine_sql = sql.quarantine()
        self.application_name = application_name
        self.listener = Listener(dsn, sql.jobs_channel, application_name=application_name)
        self.migrated: list[int] = []
        """Migration versions applied when this source was opened with ``migrate=True``."""

    # -- plumbing --------------------------------------------------------------------------
    async def _call(
        self,
        op: Callable[[Any], Coroutine[Any, Any, T]],
        *,
        retry: bool = False,
        relaxed: bool = False,
        timeout: float | None = None,
        in_task: bool = False,
    ) -> T:
        """Run ``op(connection)`` as one asyncio hop, mapping driver errors to jobbuf errors.

        ``relaxed`` operations (claims, heartbeats) commit without waiting for the WAL
        flush: if the database itself crashes, a lost claim means a job is delivered again
        and a lost lease extension means it may be rescued early — both within
        at-least-once. Enqueues, acks and releases always wait: they are durable.
        ``in_task`` is for an ``op`` that opens a transaction (see ``Connections.run``).
        """
        connections = self._relaxed if relaxed else self._durable
        limit = self._operation_timeout if timeout is None else timeout
        deadline = trio.current_time() + (self._retry_timeout if retry else 0.0)
        delay = 0.05
        while True:
            try:
                # A server that stops answering (a blackholed network) must not block us
                # forever: past operation_timeout the attempt is abandoned (its connection
                # is terminated) and counts as a lost connection. Unless the caller's own
                # deadline comes first (a buffer's claim): then that one bounds the attempt,
                # and a scope that could not fire first is not worth its cost here.
                if trio.current_effective_deadline() <= trio.current_time() + limit:
                    return await connections.run(op, in_task=in_task)
                with trio.move_on_after(limit):
                    return await connections.run(op, in_task=in_task)
                raise TimeoutError(f"no answer within {limit:g}s")
            except MISSING_SCHEMA as exc:
                problem = f"schema {self.schema!r} is missing or incomplete ({exc})"
                raise SchemaError(self._schema_fix(problem)) from None
            except (*TRANSIENT, asyncpg.InternalClientError) as exc:
                if isinstance(exc, asyncpg.InternalClientError) and not _is_dead_connection(exc):
                    raise
                remaining = deadline - trio.current_time()
                if remaining <= 0:
                    raise DatabaseUnavailableError(f"database unavailable at {self.dsn}: {reason(exc)}") from None
                log.warning("database unavailable at %s (%s); retrying", self.dsn, reason(exc))
            # Backoff with jitter, the last sleep cut to the deadline: one more try at it.
            await trio.sleep(min(delay * _jitter.uniform(0.5, 1.5), remaining))
            delay = min(delay * 2, 1.0)

    def _schema_fix(self, problem: str) -> str:
        fix = f"jobbuf migrate --dsn {copyable_dsn(self.dsn)} --schema {self.schema}"
        return f"{problem}: run `{fix}` or pass migrate=True"

    async def _fetch(self, sql: str, *args: Any, retry: bool = False) -> list[Any]:
        async def op(conn: Any) -> list[Any]:
            return list(await conn.fetch(sql, *args))

        return await self._call(op, retry=retry)

    # -- schema ----------------------------------------------------------------------------
    async def migrate(self) -> list[int]:
        """Apply missing migrations under an advisory lock; return the versions applied.

        A schema already at this version is only read, so a role without the right to
        create schemas can open it with ``migrate=True``.
        No ``operation_timeout``: a migration may take long, or wait for another one's lock.
        Bound it from outside (a trio deadline) if needed; cancelled, it rolls back."""
        sql = self._sql

        async def op(conn: Any) -> list[int]:
            if (await self._version(conn) or 0) >= SCHEMA_VERSION:
                return []  # nothing to apply (a newer schema is check_schema's to refuse)
            async with conn.transaction():
                await conn.execute(sql.migrate_lock(), self.schema)
                await conn.execute(sql.migrate_prelude())
                current = await conn.fetchval(sql.current_version())
                applied = []
                for version, script in MIGRATIONS:
                    if version > current:
                        await conn.execute(script.format(s=sql.s))
                        await conn.execute(sql.record_version(), version)
                        applied.append(version)
                return applied

        # A migration may take long; its transaction's rollback on cancellation needs a Task.
        return await self._call(op, timeout=math.inf, in_task=True)

    async def _version(self, conn: Any) -> int | None:
        """The schema's version, or None when it has no version table."""
        if not await conn.fetchval(self._sql.schema_exists(), f"{self._sql.s}.schema_version"):
            return None
        return int(await conn.fetchval(self._sql.current_version()))

    async def check_schema(self) -> int:
        """Return the schema version; raise :class:`SchemaError` naming the fix if it is not usable."""
        version = await self._call(self._version)
        if version is None:
            raise SchemaError(self._schema_fix(f"schema {self.schema!r} not found in {self.dsn}"))
        if version < SCHEMA_VERSION:
            raise SchemaError(self._schema_fix(f"schema {self.schema!r} is at version {version}, not {SCHEMA_VERSION}"))
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"schema {self.schema!r} is at version {version}, newer than this jobbuf "
                f"understands ({SCHEMA_VERSION}): upgrade jobbuf"
            )
        return version

    # -- producers -------------------------------------------------------------------------
    async def enqueue(
        self,
        queue: str,
        payload: Any,
        *,
        priority: int = 0,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> int:
        """Add one job and wake listening buffers; return its id."""
        (job_id,) = await self.enqueue_many(
            queue, [payload], priority=priority, run_at=run_at, max_attempts=max_attempts
        )
        return job_id

    async def enqueue_many(
        self,
        queue: str,
        payloads: Iterable[Any],
        *,
        priority: int = 0,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> list[int]:
        """Add jobs in one statement with one NOTIFY; return ids in payload order.

        All-or-nothing: a non-JSON payload raises ``TypeError`` before anything is written.
        """
        check_enqueue(queue, priority, run_at, max_attempts)
        texts = [encode_payload(p) for p in payloads]
        if not texts:
            return []
        rows = await self._fetch(
            self._sql.enqueue(), queue, texts, priority, run_at, max_attempts, self._sql.jobs_channel, retry=True
        )
        return [row[0] for row in rows]

    # -- the buffer's side -----------------------------------------------------------------
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
        """Claim up to ``limit`` jobs in one statement (see ``_sql.Statements.claim``)."""
        sql = self._claim_sql[len(queues) == 1]
        claim = Claim(owner, secrets.randbits(63))

        async def op(conn: Any) -> ClaimResult:
            rows = await conn.fetch(
                sql, list(queues), limit, owner, worker_id, claim.token, default_max_attempts, lease
            )
            result = _decode_rows(rows, claim)
            if result.poison:
                await conn.execute(self._quarantine_sql, *map(list, zip(*result.poison, strict=True)))
            return ClaimResult(result.jobs, dead=result.dead, quarantined=len(result.poison))

        return await self._call(op, relaxed=True)

    async def release(self, jobs: Sequence[Job]) -> list[int]:
        """Release jobs whose claim still matches (waking listeners of their queues); return
        the ids released."""
        claimed = [job for job in jobs if job.claim is not None]
        if not claimed:
            return []
        rows = await self._fetch(self._sql.release(), *_claim_arrays(claimed), self._sql.jobs_channel, retry=True)
        return [row[0] for row in rows]

    async def release_owner(self, owner: str, keep: Collection[int] = ()) -> list[int]:
        """Release everything ``owner`` still holds except ``keep`` (waking listeners of their
        queues); return the ids released."""
        rows = await self._fetch(self._sql.release_owner(), owner, list(keep), self._sql.jobs_channel, retry=True)
        return [row[0] for row in rows]

    async def ack(self, acks: Sequence[Ack], *, default_max_attempts: int) -> list[AckOutcome]:
        """Apply every ack in one statement; return one outcome per ack, in order."""
        if len({a.job.id for a in acks}) != len(acks):
            return await self._ack_in_rounds(acks, default_max_attempts)
        done = [a.job for a in acks if a.error is None]
        failed = [a for a in acks if a.error is not None]
        owners = {j.claim.owner if j.claim else None for j in done}
        only_owner = owners.pop() if len(owners) == 1 else None
        # The common case, completions of one owner's claims, has a cheaper statement.
        if not failed and only_owner is not None:  # (so every job has a claim)
            return await self._complete(done, only_owner)
        existing_sql, failed_sql = self._existing_sql, self._failed_sql
        ack_sql, args = self._ack_sql, (
            *_claim_arrays(done), *_claim_arrays([a.job for a in failed]),
            [a.error for a in failed], [a.retry_in for a in failed], default_max_attempts,
        )  # fmt: skip

        tries = 0

        async def op(conn: Any) -> dict[int, str]:
            nonlocal tries
            tries += 1
            outcomes = {row[0]: row[1] for row in await conn.fetch(ack_sql, *args)}
            missing = [job.id for job in done if job.id not in outcomes]
            if missing:  # see Statements.existing
                still = {row[0] for row in await conn.fetch(existing_sql, missing)}
                outcomes.update({i: "done" for i in missing if i not in still})
            if tries > 1:  # a retry (_call's, after a lost connection): see Statements.failed
                unmatched = [(a.job.id, a.job.claim.token) for a in failed if a.job.id not in outcomes and a.job.claim]
                if unmatched:
                    ids, tokens = zip(*unmatched, strict=True)
                    rows = await conn.fetch(failed_sql, list(ids), list(tokens))
                    outcomes.update({row[0]: row[1] for row in rows})
            return outcomes

        outcomes = await self._call(op, retry=True)
        return [outcomes.get(a.job.id, "lost") for a in acks]  # type: ignore[misc]

    async def _complete(self, jobs: list[Job], owner: str) -> list[AckOutcome]:
        """Completions of ``owner``'s claims (``Statements.complete``)."""
        ids, tokens = [j.id for j in jobs], [j.claim.token for j in jobs if j.claim]
        complete_sql, existing_sql = self._complete_sql, self._sql.existing()

        async def op(conn: Any) -> set[int]:
            tag = await conn.execute(complete_sql, ids, owner, tokens)  # "DELETE n" / "UPDATE n"
            if int(tag.rsplit(" ", 1)[1]) == len(ids):
                return set()
            # Some claims did not match: those rows still there, not done, were taken over.
            return {row[0] for row in await conn.fetch(existing_sql, ids)}

        lost = await self._call(op, retry=True)
        if not lost:
            return ["done"] * len(jobs)
        return ["lost" if i in lost else "done" for i in ids]

    async def _ack_in_rounds(self, acks: Sequence[Ack], default_max_attempts: int) -> list[AckOutcome]:
        # Two acks of one job in a batch would hit one row in one statement, where
        # PostgreSQL does not say which wins: apply them in order, one round each.
        seen: set[int] = set()
        first: list[int] = []
        for index, ack in enumerate(acks):
            if ack.job.id not in seen:
                seen.add(ack.job.id)
                first.append(index)
        later = [i for i in range(len(acks)) if i not in set(first)]
        outcomes: list[AckOutcome] = ["lost"] * len(acks)
        for indexes in (first, later):
            results = await self.ack([acks[i] for i in indexes], default_max_attempts=default_max_attempts)
            for i, outcome in zip(indexes, results, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def heartbeat(
        self, worker: WorkerInfo, held: Sequence[Job], lease: float | None, stats: dict[str, Any]
    ) -> None:
        """Extend held leases (when ``lease`` is set) and publish stats, in one hop."""
        sql = self._sql
        claims = _claim_arrays([j for j in held if j.claim is not None])
        row = (
            worker.instance, worker.worker_id, worker.host, worker.pid, list(worker.queues), worker.started_at,
            json.dumps(worker.config), json.dumps(stats), sql.workers_channel,
        )  # fmt: skip

        async def op(conn: Any) -> None:
            if lease is not None and claims[0]:
                await conn.execute(sql.extend_leases(), *claims, lease)
            await conn.execute(sql.publish_worker(), *row)

        await self._call(op, relaxed=True)

    async def deregister(self, instance: str) -> None:
        """Remove the worker row."""
        await self._fetch(self._sql.deregister(), instance, retry=True)

    def listen(self, queues: Collection[str], callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when an enqueue, release or requeue in one of ``queues`` is
        notified (see :class:`Listener`)."""
        return self.listener.subscribe(queues, callback)

    # -- inspection ------------------------------------------------------------------------
    async def job_states(self, ids: Sequence[int] | None = None) -> list[JobState]:
        """Stored rows for ``ids`` (all when ``None``), by id."""
        rows = await self._fetch(self._sql.job_states(), None if ids is None else list(ids))
        return [JobState(**dict(row)) for row in rows]

    async def queue_counts(self) -> list[QueueCounts]:
        """Counts per queue and status."""
        return [QueueCounts(**dict(row)) for row in await self._fetch(self._sql.queue_counts(), None)]

    async def workers(self) -> list[dict[str, Any]]:
        """Registered worker rows, with their published stats decoded."""
        rows = await self._fetch(self._sql.workers())
        return [{**dict(r), "config": json.loads(r["config"]), "stats": json.loads(r["stats"])} for r in rows]

    async def requeue_dead(self, queue: str, ids: Sequence[int] | None = None) -> list[int]:
        """Put dead jobs back to pending with attempts reset (waking listeners of the queue);
        return their ids."""
        check_identifier("queue", queue)
        rows = await self._fetch(
            self._sql.requeue(), queue, None if ids is None else list(ids), self._sql.jobs_channel, retry=True
        )
        return [row[0] for row in rows]


class _Decoded:
    __slots__ = ("dead", "jobs", "poison")

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.dead = 0
        self.poison: list[tuple[int, str, int, str]] = []  # (id, owner, token, error)


def _decode_rows(rows: Sequence[Any], claim: Claim) -> _Decoded:
    """Rows of ``Statements.claim`` as jobs, in claim order (priority DESC, run_at, id;
    the statement returns them unordered), with timestamps from epoch seconds."""
    out = _Decoded()
    times: dict[float, datetime] = {}  # each distinct timestamp made once
    for row in sorted(rows, key=_claim_order):
        if row[8] == "dead":  # rescued with no attempts left
            out.dead += 1
            continue
        try:
            payload = decode_payload(row[2])
        except (ValueError, RecursionError) as exc:
            out.poison.append((row[0], claim.owner, claim.token, f"payload is not JSON: {exc}"))
            continue
        run_at = times.get(row[6]) or times.setdefault(row[6], _timestamp(row[6]))
        created_at = times.get(row[7]) or times.setdefault(row[7], _timestamp(row[7]))
        out.jobs.append(claimed_job(row[0], row[1], payload, row[3], row[4], row[5], run_at, created_at, claim))
    return out


def _claim_order(row: Any) -> tuple[int, float, int]:
    return -row[3], row[6], row[0]


_INFINITY, _NEG_INFINITY = datetime.max, datetime.min  # what asyncpg decodes for +-infinity


def _timestamp(epoch: float) -> datetime:
    """``date_part('epoch', t)`` of a timestamptz ``t`` as the aware UTC datetime asyncpg
    decodes ``t`` as. Exact to the microsecond from 1698 to 2241: PostgreSQL divides the
    exact microsecond count by 10**6, and below 2**33 seconds a double is within half a
    microsecond of it, which ``fromtimestamp`` rounds away. Outside those years (only
    rows written by hand get there) it may be some microseconds off, and past what a
    datetime holds (such a value rounded up to year 10000) it is the last or first one."""
    if epoch == math.inf:
        return _INFINITY
    if epoch == -math.inf:
        return _NEG_INFINITY
    try:
        return datetime.fromtimestamp(epoch, UTC)
    except (ValueError, OverflowError):
        return (_INFINITY if epoch > 0 else _NEG_INFINITY).replace(tzinfo=UTC)


def _claim_arrays(jobs: Sequence[Job]) -> tuple[list[int], list[str | None], list[int | None]]:
    return (
        [j.id for j in jobs],
        [j.claim.owner if j.claim else None for j in jobs],
        [j.claim.token if j.claim else None for j in jobs],
    )


def _is_dead_connection(exc: BaseException) -> bool:
    """Whether an ``InternalClientError`` means "this pooled connection was killed".

    When a backend is terminated (``pg_terminate_backend``, a server restart), the server
    sends a FATAL error and closes the socket. asyncpg parses the error first and waits,
    in its "error consume" state, for a ReadyForQuery that never comes; a query sent on
    that connection before the close is processed fails with "cannot switch to state N;
    another operation (2) is in progress". ``Connections`` terminates a connection whose
    operation failed that way, so the operation is transient like any other connection
    loss (retried where allowed).
    """
    return "cannot switch to state" in str(exc)


def reason(exc: BaseException) -> str:
    """An exception's text for a message, with any DSN password redacted."""
    return redact_dsn(str(exc) or type(exc).__name__)
