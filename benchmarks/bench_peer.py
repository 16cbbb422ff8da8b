"""Peer: pgqueuer (from PyPI) on asyncio + uvloop, same server, its own tables.

pgqueuer is installed into the benchmark's own schema (``PGQUEUER_SCHEMA``) with its own
NOTIFY channel (``PGQUEUER_CHANNEL``), via ``Queries.install()``; run.py drops the schema.
This process never imports jobbuf or trio_asyncio.

Cases:
  drain    N pre-enqueued no-op jobs (batch enqueue, not timed), drained by ``qms`` queue
           managers (each with its own asyncpg pool) in ``mode=drain``; the clock stops when
           every manager has returned, i.e. the queue is empty and status logs are flushed.
           params: schema, n, batch, qms, uvloop (default true)
  latency  an idle queue manager; ``samples`` single enqueues one at a time,
           enqueue -> handler start. params: schema, samples, paired, uvloop
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from common import bench_main, latency_summary, log, read_stdin_line, sample_latencies

CHUNK = 5000


def _configure(schema: str) -> None:
    os.environ["PGQUEUER_SCHEMA"] = schema
    os.environ["PGQUEUER_CHANNEL"] = f"{schema}_ch"
    from pgqueuer.domain.settings import db_settings

    db_settings.cache_clear()


async def _install(dsn: str) -> Any:
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    return conn, queries


async def _make_qm(dsn: str, handler: Callable[[Any], Awaitable[None]]) -> tuple[Any, Any]:
    from pgqueuer import AsyncpgPoolDriver, Queries, QueueManager

    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
    qm = QueueManager(Queries(AsyncpgPoolDriver(pool)))
    qm.entrypoint("noop")(handler)
    return qm, pool


async def _drain(p: dict[str, Any]) -> dict[str, Any]:
    from pgqueuer.domain.types import QueueExecutionMode

    schema, n, batch, qms = str(p["schema"]), int(p["n"]), int(p["batch"]), int(p.get("qms", 1))
    conn, queries = await _install(p["dsn"])
    for start in range(0, n, CHUNK):
        k = min(n, start + CHUNK) - start
        await queries.enqueue(["noop"] * k, [b"{}"] * k, [0] * k)
    await conn.execute(f'ANALYZE "{schema}".pgqueuer')
    done = 0

    async def noop(job: Any) -> None:
        nonlocal done
        done += 1

    managers = [await _make_qm(p["dsn"], noop) for _ in range(qms)]
    log(f"pgqueuer drain: n={n} batch={batch} qms={qms}")
    t0 = time.perf_counter()
    await asyncio.gather(*(qm.run(batch_size=batch, mode=QueueExecutionMode.drain) for qm, _ in managers))
    elapsed = time.perf_counter() - t0
    left = await conn.fetchval(f'SELECT count(*) FROM "{schema}".pgqueuer')
    for _, pool in managers:
        await pool.close()
    await conn.close()
    return {"jobs_per_s": n / elapsed, "seconds": elapsed, "n": n, "batch": batch, "qms": qms,
            "handled": done, "left": left}  # fmt: skip


async def _latency(p: dict[str, Any]) -> dict[str, Any]:
    conn, queries = await _install(p["dsn"])
    started: asyncio.Queue[float] = asyncio.Queue()

    async def handler(job: Any) -> None:
        started.put_nowait(time.perf_counter())

    qm, pool = await _make_qm(p["dsn"], handler)
    task = asyncio.create_task(qm.run(batch_size=10))
    await asyncio.sleep(0.5)  # let it start listening

    async def one() -> float:
        t0 = time.perf_counter()
        await queries.enqueue("noop", b"{}")
        return await asyncio.wait_for(started.get(), 30) - t0

    lat = await sample_latencies(one, p, sleep=asyncio.sleep, read_line=read_stdin_line)
    qm.shutdown.set()
    await asyncio.wait_for(task, 30)
    await pool.close()
    await conn.close()
    return latency_summary(lat)


def _run(coro_fn: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], p: dict[str, Any]) -> dict[str, Any]:
    _configure(str(p["schema"]))
    if p.get("uvloop", True):
        import uvloop

        return uvloop.run(coro_fn(p))  # type: ignore[arg-type]
    return asyncio.run(coro_fn(p))  # type: ignore[arg-type]


def drain(p: dict[str, Any]) -> dict[str, Any]:
    return _run(_drain, p)


def latency(p: dict[str, Any]) -> dict[str, Any]:
    return _run(_latency, p)


if __name__ == "__main__":
    bench_main({"drain": drain, "latency": latency}, __doc__)
