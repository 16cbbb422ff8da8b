"""Test helpers that reach PostgreSQL independently of the code under test."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import trio


def _run_sql(dsn: str, sql: str, args: tuple[Any, ...]) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(go())
    finally:
        loop.close()


async def sql(dsn: str, query: str, *args: Any) -> list[Any]:
    """Run ``query`` on a fresh plain-asyncio connection in a worker thread."""
    return await trio.to_thread.run_sync(_run_sql, dsn, query, args)


async def statuses(dsn: str, schema: str) -> dict[int, tuple[str, int, str | None]]:
    """id -> (status, attempts, owner) for every row."""
    rows = await sql(dsn, f'SELECT id, status, attempts, owner FROM "{schema}".jobs')
    return {r["id"]: (r["status"], r["attempts"], r["owner"]) for r in rows}


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``predicate()`` (sync or async) until true; fail after ``timeout``."""
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await trio.sleep(interval)
