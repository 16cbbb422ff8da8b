"""jobbuf drain: N pre-enqueued no-op jobs drained end to end by one process.

claim -> take_job -> handler -> complete (ack durable), with ``run_workers``. Enqueue is
done with ``enqueue_many`` in chunks and is not timed. The clock starts just before the
buffer opens and stops when ``stats().completed`` reaches N (``complete`` returns only once
the ack is durable).

Cases:
  drain   params: schema, n, capacity, batch_size, low_water, concurrency, pool_size,
          profile (optional path: write a cProfile of the timed section there)

  child   one of several drain processes started by ``bench_scale.py multi``: opens the
          source, prints READY, waits for a "go" line on stdin, drains with run_workers
          until a "stop" line (or EOF), then exits cleanly.
          params: schema, capacity, batch_size, low_water, concurrency

Run by ``run.py``; standalone: ``python benchmarks/bench_drain.py drain --params '{"schema": "x", "n": 5000}'``.
"""

from __future__ import annotations

import cProfile
import os
import sys
import time
from typing import Any

import trio
import trio_asyncio

import jobbuf
from common import bench_main, log

CHUNK = 5000


async def analyze(dsn: str, schema: str, table: str = "jobs") -> None:
    """ANALYZE the queue table from inside a trio-asyncio loop (same treatment as peers)."""
    import asyncpg

    async def op() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'ANALYZE "{schema}".{table}')
        finally:
            await conn.close()

    await trio_asyncio.aio_as_trio(op)()


async def enqueue_noop(source: jobbuf.PostgresJobSource, n: int) -> None:
    for start in range(0, n, CHUNK):
        await source.enqueue_many("default", [{"n": i} for i in range(start, min(n, start + CHUNK))])


def make_config(p: dict[str, Any]) -> jobbuf.BufferConfig:
    keys = ("capacity", "batch_size", "low_water")
    kwargs = {k: int(p[k]) for k in keys if p.get(k) is not None}
    return jobbuf.BufferConfig(**kwargs)


async def timed_drain(
    source: jobbuf.PostgresJobSource, n: int, config: jobbuf.BufferConfig, concurrency: int, worker_id: str
) -> tuple[float, jobbuf.BufferStats, int]:
    """Drain until ``n`` completions are durable; return (seconds, final stats, ack flushes).

    The ack flush count is read from a private attribute, for diagnostics only."""

    async def noop(job: jobbuf.Job) -> None:
        return None

    t0 = time.perf_counter()
    async with jobbuf.open_job_buffer(source, worker_id, config) as buf, trio.open_nursery() as nursery:
        nursery.start_soon(lambda: jobbuf.run_workers(buf, noop, concurrency=concurrency))
        while buf.stats().completed < n:  # noqa: ASYNC110 - public stats, no completion event
            await trio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        stats = buf.stats()
        flushes = int(getattr(getattr(buf, "_acks", None), "flushes", 0))
        nursery.cancel_scope.cancel()
    return elapsed, stats, flushes


async def _drain(p: dict[str, Any]) -> dict[str, Any]:
    n, schema, dsn = int(p["n"]), str(p["schema"]), str(p["dsn"])
    config = make_config(p)
    concurrency = int(p.get("concurrency", 10))
    async with jobbuf.open_postgres_source(
        dsn, schema=schema, migrate=True, pool_size=int(p.get("pool_size", 10))
    ) as source:
        await enqueue_noop(source, n)
        await analyze(dsn, schema)
        log(f"drain: {n} enqueued in {schema}; config={config} concurrency={concurrency}")
        prof = cProfile.Profile() if p.get("profile") else None
        if prof is not None:
            prof.enable()
        elapsed, stats, flushes = await timed_drain(source, n, config, concurrency, "bench-drain")
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(p["profile"]))
    return {
        "jobs_per_s": n / elapsed, "seconds": elapsed, "n": n, "concurrency": concurrency,
        "capacity": config.capacity, "batch_size": config.batch_size, "low_water": config.low_water,
        "polls": stats.polls, "empty_polls": stats.empty_polls, "claimed": stats.claimed,
        "mean_claim": stats.claimed / max(1, stats.polls - stats.empty_polls),
        "ack_flushes": flushes, "mean_ack_batch": n / max(1, flushes),
    }  # fmt: skip


def drain(p: dict[str, Any]) -> dict[str, Any]:
    return trio.run(_drain, p)


async def _child(p: dict[str, Any]) -> dict[str, Any]:
    config, concurrency = make_config(p), int(p.get("concurrency", 10))

    async def noop(job: jobbuf.Job) -> None:
        return None

    async with jobbuf.open_postgres_source(str(p["dsn"]), schema=str(p["schema"])) as source:
        print("READY", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # "go"
        async with jobbuf.open_job_buffer(source, f"bench-child-{os.getpid()}", config) as buf:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: jobbuf.run_workers(buf, noop, concurrency=concurrency))
                await trio.to_thread.run_sync(sys.stdin.readline)  # "stop"
                nursery.cancel_scope.cancel()
            stats = buf.stats()
    return {"completed": stats.completed, "claimed": stats.claimed, "polls": stats.polls}


def child(p: dict[str, Any]) -> dict[str, Any]:
    return trio.run(_child, p)


if __name__ == "__main__":
    bench_main({"drain": drain, "child": child}, __doc__)
