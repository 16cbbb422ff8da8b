"""Raw ceiling: plain asyncpg on asyncio, no library (never imports jobbuf; trio_asyncio
only with ``loop="trio-asyncio"``).

Durability as in jobbuf: every claim runs on a ``synchronous_commit=off`` connection (its
commit does not wait for the WAL flush; jobbuf's claims and heartbeats do the same), every
ack and enqueue on a default one (durable). A durable claim would put one WAL flush
(about 0.15 ms here) into every claim, which the library does not pay.

Cases:
  drain    N pre-enqueued rows in jobbuf's own table layout (same indexes), drained by
           ``conns`` concurrent loops, each with its own pair of connections: one statement
           claims B rows (``UPDATE ... WHERE id = ANY(ARRAY(SELECT ... FOR UPDATE SKIP
           LOCKED LIMIT B)) RETURNING``), one statement acks them (``DELETE ... WHERE id =
           ANY($1)``). params: schema, n, batch, conns, sql ("raw", the default, or
           "jobbuf": the same loops running jobbuf's own claim and claim-guarded ack
           statements: what jobbuf's SQL costs without the library around it), loop (as
           for latency)
  latency  the LISTEN/NOTIFY + claim floor: one connection LISTENs, on each notify a
           worker runs the claim on a second connection; a producer inserts one row and
           NOTIFYs in one statement (jobbuf's enqueue SQL). Enqueue -> claim returned,
           ``samples`` times sequentially. params: schema, samples, paired, loop ("asyncio",
           the default, or "trio-asyncio": the same code on trio-asyncio's loop, as a
           diagnostic of what the stack costs before any library)
  claim    claim latency at a given table size (used by bench_scale).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from common import bench_main, latency_summary, load_jobbuf_sql, log, migration_sql, read_stdin_line, sample_latencies

CHUNK = 5000
RELAXED = {"synchronous_commit": "off"}  # for claims (the module docstring)


def claim_sql(s: str) -> str:
    return f"""
    UPDATE {s}.jobs SET status = 'claimed', attempts = attempts + 1, owner = $2,
        lease_expires_at = now() + interval '30 seconds'
    WHERE id = ANY(ARRAY(
        SELECT id FROM {s}.jobs WHERE status = 'pending' AND queue = 'default' AND run_at <= now()
        ORDER BY priority DESC, run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED))
    RETURNING id, payload"""


def ack_sql(s: str) -> str:
    return f"DELETE FROM {s}.jobs WHERE id = ANY($1::bigint[])"


async def create_schema(conn: asyncpg.Connection, schema: str) -> None:
    for stmt in migration_sql(schema):
        await conn.execute(stmt)


async def enqueue(conn: asyncpg.Connection, schema: str, n: int) -> None:
    """Same INSERT as jobbuf's ``enqueue_many`` (one statement and one NOTIFY per chunk)."""
    st = load_jobbuf_sql().Statements(schema)
    for start in range(0, n, CHUNK):
        texts = [json.dumps({"n": i}) for i in range(start, min(n, start + CHUNK))]
        await conn.fetch(st.enqueue(), "default", texts, 0, None, None, st.jobs_channel)
    await conn.execute(f'ANALYZE "{schema}".jobs')


async def _drain(p: dict[str, Any]) -> dict[str, Any]:
    schema, n, batch, conns = str(p["schema"]), int(p["n"]), int(p["batch"]), int(p.get("conns", 1))
    sql = str(p.get("sql", "raw"))
    s = f'"{schema}"'
    setup = await asyncpg.connect(p["dsn"])
    await create_schema(setup, schema)
    await enqueue(setup, schema, n)
    pool = [await asyncpg.connect(p["dsn"]) for _ in range(conns)]
    relaxed = [await asyncpg.connect(p["dsn"], server_settings=RELAXED) for _ in range(conns)]
    done = 0

    async def raw_loop(conn: asyncpg.Connection, claim_conn: asyncpg.Connection, _: int) -> None:
        nonlocal done
        claim, ack = await claim_conn.prepare(claim_sql(s)), await conn.prepare(ack_sql(s))
        while True:
            rows = await claim.fetch(batch, "raw")
            if not rows:
                return
            await ack.fetch([r[0] for r in rows])
            done += len(rows)

    async def jobbuf_sql_loop(conn: asyncpg.Connection, claim_conn: asyncpg.Connection, k: int) -> None:
        nonlocal done
        st = load_jobbuf_sql().Statements(schema)
        # The statements jobbuf runs for this workload: its claim, and its ack of completions
        # from one owner (PostgresJobSource.ack picks Statements.complete for those).
        claim, ack = await claim_conn.prepare(st.claim(single_queue=True)), await conn.prepare(st.complete(False))
        owner = f"raw-{k}"
        for token in itertools.count():
            rows = await claim.fetch(["default"], batch, owner, "raw", token, 20, 30.0)
            if not rows:
                return
            ids = [r[0] for r in rows]
            await ack.fetch(ids, owner, [token] * len(ids))
            done += len(rows)

    log(f"raw drain: n={n} batch={batch} conns={conns} sql={sql}")
    loop = jobbuf_sql_loop if sql == "jobbuf" else raw_loop
    t0 = time.perf_counter()
    await asyncio.gather(*(loop(c, r, k) for k, (c, r) in enumerate(zip(pool, relaxed, strict=True))))
    elapsed = time.perf_counter() - t0
    for c in [*pool, *relaxed, setup]:
        await c.close()
    assert done == n, (done, n)
    return {"jobs_per_s": n / elapsed, "seconds": elapsed, "n": n, "batch": batch, "conns": conns}


async def _latency(p: dict[str, Any]) -> dict[str, Any]:
    schema = str(p["schema"])
    st = load_jobbuf_sql().Statements(schema)
    s = f'"{schema}"'
    setup = await asyncpg.connect(p["dsn"])
    await create_schema(setup, schema)
    listener, producer = [await asyncpg.connect(p["dsn"]) for _ in range(2)]
    worker, relaxed = await asyncpg.connect(p["dsn"]), await asyncpg.connect(p["dsn"], server_settings=RELAXED)
    claim = await relaxed.prepare(claim_sql(s))
    # Execute once on the empty table: seen here, the first execution of this prepared
    # claim on a freshly created table can miss a row inserted after PREPARE.
    await claim.fetch(10, "raw")
    wake: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(st.jobs_channel, lambda *a: wake.put_nowait(a[-1]))
    got: asyncio.Queue[float] = asyncio.Queue()

    async def work() -> None:
        while True:
            await wake.get()
            rows = await claim.fetch(10, "raw")
            if rows:
                got.put_nowait(time.perf_counter())
                await worker.execute(ack_sql(s), [r[0] for r in rows])

    task = asyncio.create_task(work())
    task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or log(f"worker died: {t.exception()!r}"))
    enqueue_sql = st.enqueue()

    async def one() -> float:
        t0 = time.perf_counter()
        await producer.fetch(enqueue_sql, "default", ['{"n": 0}'], 0, None, None, st.jobs_channel)
        return await got.get() - t0

    lat = await sample_latencies(one, p, sleep=asyncio.sleep, read_line=read_stdin_line)
    task.cancel()
    for c in (listener, worker, relaxed, producer, setup):
        await c.close()
    return latency_summary(lat)


def _run(main: Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]], p: dict[str, Any]) -> dict[str, Any]:
    if p.get("loop") == "trio-asyncio":
        # The same code on trio-asyncio's loop, run from trio (one aio_as_trio around it
        # all): what it costs on the stack jobbuf is built on, before any library.
        import trio
        import trio_asyncio

        async def on_trio() -> dict[str, Any]:
            async with trio_asyncio.open_loop():
                return await trio_asyncio.aio_as_trio(main)(p)  # type: ignore[no-any-return]

        return trio.run(on_trio)
    return asyncio.run(main(p))


def drain(p: dict[str, Any]) -> dict[str, Any]:
    return _run(_drain, p)


def latency(p: dict[str, Any]) -> dict[str, Any]:
    return _run(_latency, p)


if __name__ == "__main__":
    bench_main({"drain": drain, "latency": latency}, __doc__)
