"""jobbuf's pytest plugin, registered through the ``pytest11`` entry point.

Fixtures (all function-scoped, trio):

- ``jobbuf_dsn``: the PostgreSQL to test against: ``$JOBBUF_TEST_DSN``, else the local
  server at ``postgresql://postgres@127.0.0.1:5432/test`` if it answers, else an embedded
  server (started once per session).
- ``memory_source``: a fresh :class:`~jobbuf.MemoryJobSource`.
- ``postgres_source``: a :class:`~jobbuf.PostgresJobSource` on a fresh, migrated schema
  that is dropped after the test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from jobbuf_monitor.embedded import test_dsn

from .._memory import MemoryJobSource
from .._postgres import PostgresJobSource, open_postgres_source

__all__ = ["drop_schema", "fresh_schema_name"]


def fresh_schema_name() -> str:
    """A unique schema name for one test."""
    return f"jobbuf_t_{uuid.uuid4().hex[:16]}"


def drop_schema(dsn: str, schema: str) -> None:
    """Drop ``schema`` and everything in it (blocking; plain asyncio in this thread)."""
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()  # independent of any loop trio-asyncio runs
    try:
        loop.run_until_complete(drop())
    finally:
        loop.close()


@pytest.fixture(scope="session")
def jobbuf_dsn() -> Iterator[str]:
    """DSN of the PostgreSQL server tests use (see the module docstring)."""
    yield test_dsn()


@pytest.fixture
async def memory_source() -> AsyncIterator[MemoryJobSource]:
    """A fresh in-memory source."""
    yield MemoryJobSource()


@pytest.fixture
async def postgres_source(jobbuf_dsn: str) -> AsyncIterator[PostgresJobSource]:
    """A PostgreSQL source on a fresh migrated schema, dropped after the test."""
    schema = fresh_schema_name()
    try:
        async with open_postgres_source(jobbuf_dsn, schema=schema, migrate=True) as source:
            yield source
    finally:
        await trio.to_thread.run_sync(drop_schema, jobbuf_dsn, schema)
