"""Helpers for the monitor tests: plain asyncio (never trio), a fresh schema per test.

pyproject sets ``trio_mode = true``, so every test here is a *synchronous* function that runs
its coroutine on an explicit ``asyncio.SelectorEventLoop`` via :func:`run` (DESIGN.md §3),
bounded by ``asyncio.timeout``. Tables are created from ``src/jobbuf/_sql.py`` loaded by
path, so the monitor tests never import the ``jobbuf`` package (which imports trio).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def _migrations() -> tuple[tuple[int, str], ...]:
    spec = importlib.util.spec_from_file_location("_jobbuf_sql_standalone", ROOT / "src" / "jobbuf" / "_sql.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    migrations: tuple[tuple[int, str], ...] = module.MIGRATIONS
    return migrations


MIGRATIONS = _migrations()


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` on a fresh SelectorEventLoop, failing after ``timeout`` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    # asyncio.Runner (not asyncio.run) takes a loop_factory on 3.11; it also cancels and
    # awaits leftover tasks before closing the loop, so nothing is destroyed while pending.
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(bounded())


async def execute(dsn: str, *statements: str) -> None:
    """Run each statement on one short-lived connection."""
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Db:
    """A fresh schema with the jobbuf tables, plus helpers that write rows directly."""

    dsn: str
    schema: str

    @property
    def s(self) -> str:
        return f'"{self.schema}"'

    async def add_worker(
        self,
        worker_id: str,
        *,
        host: str = "host-a",
        pid: int = 1000,
        queues: tuple[str, ...] = ("default",),
        age: float = 0.0,
        config: dict[str, Any] | None = None,
        notify: bool = True,
        **stats: Any,
    ) -> str:
        """Insert (or update) a worker row as a live buffer would publish it; returns the instance."""
        instance = str(stats.pop("instance", f"{worker_id}-{secrets.token_hex(3)}"))
        full = {"worker_id": worker_id, "instance": instance, "running": True, "capacity": 50, "depth": 0}
        full.update(stats)
        cfg = {"capacity": full["capacity"], "stats_interval": 1.0, "lease": 30.0, "queues": list(queues)}
        cfg.update(config or {})
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(
                f"""INSERT INTO {self.s}.workers
                    (instance, worker_id, host, pid, queues, started_at, heartbeat_at, config, stats)
                VALUES ($1, $2, $3, $4, $5, now() - interval '1 hour', now() - $6 * interval '1 second',
                        $7::jsonb, $8::jsonb)
                ON CONFLICT (instance) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, stats = EXCLUDED.stats""",
                instance, worker_id, host, pid, list(queues), age, json.dumps(cfg), json.dumps(full),
            )  # fmt: skip
            if notify:
                await conn.execute("SELECT pg_notify($1, $2)", f"{self.schema}.workers", instance)
        finally:
            await conn.close()
        return instance

    async def add_jobs(self, queue: str, n: int, *, status: str = "pending", delay: float = 0.0) -> None:
        """Insert ``n`` jobs in ``queue`` with ``status``; ``delay`` > 0 schedules them in the future."""
        await execute(
            self.dsn,
            f"""INSERT INTO {self.s}.jobs (queue, payload, status, run_at)
                SELECT '{queue}', '{{}}', '{status}', now() + interval '{delay} seconds'
                FROM generate_series(1, {n})""",
        )


@dataclass
class Role:
    """A login role with read-only access to one schema (what the monitor needs, no more)."""

    admin_dsn: str
    name: str
    dsn: str

    async def set_login(self, allowed: bool) -> None:
        """Allow or forbid new logins; when forbidding, also kill the role's open sessions."""
        login = "LOGIN" if allowed else "NOLOGIN"
        statements = [f'ALTER ROLE "{self.name}" {login}']
        if not allowed:
            statements.append(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{self.name}'")
        await execute(self.admin_dsn, *statements)


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll ``predicate()`` until true; fail with a clear message after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {getattr(predicate, '__doc__', predicate)}")
        await asyncio.sleep(interval)
