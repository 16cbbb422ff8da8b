"""Scale: claim latency at 10k vs 1M pending rows, and drain with 1, 2 and 4 processes.

Runs on plain asyncio + asyncpg (the drain children are separate jobbuf processes).

Cases:
  claim  build jobbuf's table with ``rows`` pending rows (``INSERT ... SELECT
         generate_series``), ``ANALYZE``, print the first lines of ``EXPLAIN`` of jobbuf's
         own claim statement (and check there is no Seq Scan on jobs), then time
         ``claims`` claims of ``batch`` rows, each in a transaction rolled back so the table
         stays the same. params: schema, rows, batch, claims
  multi  ``n`` rows pre-enqueued (jobbuf's enqueue statement, in chunks; not timed), then
         ``procs`` subprocesses (``bench_drain.py child``) each run a buffer on the same
         schema; the clock runs from "go" until the table is empty (acks delete rows, so
         every ack is durable). Also reports ``machine_busy``: the share of all cores
         (from /proc/stat) that was busy meanwhile, processes and PostgreSQL together;
         what is left is all more processes could use. params: schema, n, procs,
         capacity, batch_size, low_water, concurrency
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import sys
import time
from typing import Any

import asyncpg

from bench_raw import create_schema, enqueue
from common import BENCH_DIR, bench_main, load_jobbuf_sql, log, median

SEQ_SCAN_ON_JOBS = re.compile(r"Seq Scan on jobs\b")


def cpu_ticks() -> tuple[int, int]:
    """(all, idle) CPU ticks of the whole machine so far, from /proc/stat (Linux)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]  # idle + iowait


async def _claim(p: dict[str, Any]) -> dict[str, Any]:
    schema, rows = str(p["schema"]), int(p["rows"])
    batch, claims = int(p.get("batch", 100)), int(p.get("claims", 30))
    st = load_jobbuf_sql().Statements(schema)
    conn = await asyncpg.connect(p["dsn"])
    await create_schema(conn, schema)
    t0 = time.perf_counter()
    await conn.execute(
        f"INSERT INTO {st.s}.jobs (queue, payload) "
        "SELECT 'default', '{\"n\": ' || g || '}' FROM generate_series(1, $1) AS g",
        rows,
    )
    await conn.execute(f"ANALYZE {st.s}.jobs")
    log(f"claim: {rows} rows built in {time.perf_counter() - t0:.1f}s")
    sql = st.claim(single_queue=True)
    args = (["default"], batch, "bench-owner", "bench", secrets.randbits(63), 20, 30.0)
    plan = [r[0] for r in await conn.fetch("EXPLAIN " + sql, *args)]
    stmt = await conn.prepare(sql)
    times: list[float] = []
    for i in range(-5, claims):
        tr = conn.transaction()
        await tr.start()
        t = time.perf_counter()
        got = await stmt.fetch(*args)
        took = time.perf_counter() - t
        await tr.rollback()
        assert len(got) == batch, len(got)
        if i >= 0:
            times.append(took)
    await conn.close()
    return {
        "rows": rows, "batch": batch, "claim_ms": median(times) * 1000, "plan_head": plan[:14],
        "seq_scan_on_jobs": any(SEQ_SCAN_ON_JOBS.search(line) for line in plan),
    }  # fmt: skip


async def _multi(p: dict[str, Any]) -> dict[str, Any]:
    schema, n, procs = str(p["schema"]), int(p["n"]), int(p["procs"])
    conn = await asyncpg.connect(p["dsn"])
    await create_schema(conn, schema)
    await enqueue(conn, schema, n)
    child_params = {k: p[k] for k in ("dsn", "schema", "capacity", "batch_size", "low_water", "concurrency") if k in p}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH_DIR / "bench_drain.py"),
            "child",
            "--params",
            json.dumps(child_params),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(procs)
    ]
    for c in children:
        assert c.stdout is not None
        line = await asyncio.wait_for(c.stdout.readline(), 60)
        assert line.strip() == b"READY", line
    count = f'SELECT count(*) FROM "{schema}".jobs'
    log(f"multi: {procs} processes draining {n}")
    t0, ticks0 = time.perf_counter(), cpu_ticks()
    for c in children:
        assert c.stdin is not None
        c.stdin.write(b"go\n")
        await c.stdin.drain()
    while await conn.fetchval(count) > 0:  # noqa: ASYNC110 - polling the database is the point
        await asyncio.sleep(0.02)
    elapsed, ticks1 = time.perf_counter() - t0, cpu_ticks()
    total, idle = ticks1[0] - ticks0[0], ticks1[1] - ticks0[1]
    completed = []
    for c in children:
        assert c.stdin is not None and c.stdout is not None
        c.stdin.write(b"stop\n")
        await c.stdin.drain()
        out = (await asyncio.wait_for(c.stdout.read(), 60)).decode()
        await c.wait()
        completed += [json.loads(x[7:])["completed"] for x in out.splitlines() if x.startswith("RESULT ")]
    await conn.close()
    return {
        "jobs_per_s": n / elapsed, "seconds": elapsed, "n": n, "procs": procs, "per_process": completed,
        "machine_busy": (total - idle) / total if total else math.nan,
    }  # fmt: skip


def claim(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_claim(p))


def multi(p: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_multi(p))


if __name__ == "__main__":
    bench_main({"claim": claim, "multi": multi}, __doc__)
