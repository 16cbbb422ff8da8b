"""jobbuf's pytest plugin, registered through the ``pytest11`` entry point (active as soon
as jobbuf is installed; disable with ``-p no:jobbuf``).

Fixtures:

- ``jobbuf_dsn`` (session): the PostgreSQL to test against: ``$JOBBUF_TEST_DSN``, else
  the local server at ``postgresql://postgres@127.0.0.1:5432/test`` if it answers, else an
  embedded server (started once per session; needs the ``pgserver`` package, which has no
  build for Python 3.13).
- ``memory_source``: a fresh :class:`~jobbuf.MemoryJobSource` (pair it with pytest-trio's
  ``autojump_clock`` for virtual time).
- ``postgres_source``: a :class:`~jobbuf.PostgresJobSource` on a fresh, migrated schema
  of its own, so tests never see each other's rows. Never combine it with
  ``autojump_clock``: asyncpg's timeouts read trio's clock and would fire at once.

Cleanup guarantee: a schema made by ``postgres_source``, :func:`fresh_postgres_source`
or named by :func:`fresh_schema_name` is dropped when the test ends, whether it passed,
failed, or raised in a fixture; any that could not be dropped then (say the teardown was
interrupted or the database hiccuped) is dropped again when the session finishes, even
one ended by Ctrl-C. Only schemas this process created are touched, so concurrent
sessions on one server are safe. A process killed outright (SIGKILL) cannot clean up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from jobbuf_monitor.embedded import redact_dsn, test_dsn

from .._config import check_identifier
from .._memory import MemoryJobSource
from .._open_postgres import open_postgres_source
from .._postgres import PostgresJobSource

__all__ = ["drop_schema", "fresh_postgres_source", "fresh_schema_name", "leftover_schemas"]

log = logging.getLogger("jobbuf.testing")

_live: dict[str, str | None] = {}
"""Schemas this process created and has not dropped yet: name -> DSN (None: the test DSN)."""
_live_lock = threading.Lock()


def fresh_schema_name(dsn: str | None = None) -> str:
    """A unique schema name for one test, registered for the session-end cleanup
    (against ``dsn``, default the test DSN) until :func:`drop_schema` drops it."""
    name = f"jobbuf_t_{uuid.uuid4().hex[:16]}"
    with _live_lock:
        _live[name] = dsn
    return name


def leftover_schemas() -> dict[str, str | None]:
    """Schemas created in this process and not dropped yet (name -> DSN or None)."""
    with _live_lock:
        return dict(_live)


def drop_schemas(dsn: str, schemas: Iterable[str]) -> None:
    """Drop ``schemas`` and everything in them, over one connection (blocking; plain
    asyncio on a private loop, so call it from a thread when trio is running)."""
    import asyncpg

    names = [check_identifier("schema", s) for s in schemas]
    if not names:
        return

    async def drop() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            for name in names:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE', timeout=30)
        finally:
            await conn.close(timeout=5)

    loop = asyncio.new_event_loop()  # independent of any loop trio-asyncio runs
    try:
        loop.run_until_complete(drop())
    finally:
        loop.close()
    with _live_lock:
        for name in names:
            _live.pop(name, None)


def drop_schema(dsn: str, schema: str) -> None:
    """Drop ``schema`` and everything in it (blocking; see :func:`drop_schemas`)."""
    drop_schemas(dsn, [schema])


@asynccontextmanager
async def fresh_postgres_source(dsn: str, **options: Any) -> AsyncIterator[PostgresJobSource]:
    """``open_postgres_source(dsn, schema=<fresh>, migrate=True, **options)``, with the
    schema dropped on exit (and at session end if that fails). For sources with options
    the ``postgres_source`` fixture does not set, e.g. ``keep_completed=True``."""
    if "schema" in options or "migrate" in options:
        raise TypeError("fresh_postgres_source chooses schema and migrate itself; pass other options only")
    schema = fresh_schema_name(dsn)
    try:
        async with open_postgres_source(dsn, schema=schema, migrate=True, **options) as source:
            yield source
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            try:
                await trio.to_thread.run_sync(drop_schema, dsn, schema)
            except Exception as exc:  # retried at session end
                log.warning("jobbuf: could not drop test schema %s now (%s); retrying at session end", schema, exc)


def _drop_leftovers() -> None:
    """Drop every schema still registered, grouped by DSN (run at session end)."""
    by_dsn: dict[str, list[str]] = {}
    for name, dsn in leftover_schemas().items():
        by_dsn.setdefault(dsn or test_dsn(), []).append(name)
    for dsn, names in by_dsn.items():
        try:
            drop_schemas(dsn, names)
        except Exception as exc:
            log.warning("jobbuf: could not drop test schemas %s on %s: %s", names, redact_dsn(dsn), exc)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the schemas this session's tests left behind (in a thread: no loop is shared)."""
    if not leftover_schemas():
        return
    worker = threading.Thread(target=_drop_leftovers, name="jobbuf-schema-cleanup", daemon=True)
    worker.start()
    worker.join(timeout=60)


@pytest.fixture(scope="session")
def jobbuf_dsn() -> Iterator[str]:
    """DSN of the PostgreSQL server tests use (see the module docstring)."""
    yield test_dsn()


@pytest.fixture
async def memory_source() -> AsyncIterator[MemoryJobSource]:
    """A fresh in-memory source (completed rows deleted, as in PostgreSQL by default)."""
    yield MemoryJobSource()


@pytest.fixture
async def postgres_source(jobbuf_dsn: str) -> AsyncIterator[PostgresJobSource]:
    """A PostgreSQL source on a fresh migrated schema, dropped after the test (see the
    cleanup guarantee in the module docstring). ``source.schema`` names it. Not under an
    auto-jumping ``MockClock`` (``autojump_clock``): real I/O waits in real time, which
    that clock skips."""
    clock = trio.lowlevel.current_clock()  # the one this test runs under, however it was chosen
    if isinstance(clock, trio.testing.MockClock) and clock.autojump_threshold != math.inf:
        pytest.fail(
            "postgres_source cannot run under autojump_clock (or any auto-jumping MockClock): it "
            "jumps past every wait for the database, so connections time out at once. Use "
            "memory_source for virtual time.",
            pytrace=False,
        )
    async with fresh_postgres_source(jobbuf_dsn) as source:
        yield source
