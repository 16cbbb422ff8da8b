"""The latency floor's own code on trio, driven the way jobbuf drives asyncpg: a diagnostic.

The same connections, statements and steps as ``bench_raw.py latency`` (LISTEN on one
connection; on each notification a worker runs the raw claim on a relaxed connection; a
producer runs jobbuf's enqueue statement), but written for trio, every query stepped from
its trio task by ``jobbuf._aio.run_aio`` on a loop set up by ``run_immediate_callbacks``,
and the notification callback an ``ImmediateCall`` that sets a ``trio.Event``. None of
the library's own code (buffer, poller, source, pool) runs: what is left between this
and the floor is the stack as jobbuf uses it; what is left between jobbuf and this is
the library.

Cases:
  latency  params: schema, samples, paired (see ``common.sample_latencies``)
"""

from __future__ import annotations

import sys
import time
from typing import Any

import asyncpg
import trio
import trio_asyncio

from bench_raw import RELAXED, ack_sql, claim_sql, create_schema
from common import bench_main, latency_summary, load_jobbuf_sql, sample_latencies
from jobbuf._aio import ImmediateCall, run_aio, run_immediate_callbacks


async def _latency(p: dict[str, Any]) -> dict[str, Any]:
    schema, dsn = str(p["schema"]), str(p["dsn"])
    st = load_jobbuf_sql().Statements(schema)
    s = f'"{schema}"'
    async with trio_asyncio.open_loop() as loop:
        run_immediate_callbacks(loop)
        connect = trio_asyncio.aio_as_trio(asyncpg.connect)
        setup, listener, producer, worker = [await connect(dsn) for _ in range(4)]
        relaxed = await connect(dsn, server_settings=RELAXED)
        await trio_asyncio.aio_as_trio(create_schema)(setup, schema)
        claim = await run_aio(relaxed.prepare(claim_sql(s)))
        await run_aio(claim.fetch(10, "raw"))  # as in bench_raw: once on the empty table
        wake = trio.Event()

        def notified(*_: Any) -> None:
            wake.set()

        await run_aio(listener.add_listener(st.jobs_channel, ImmediateCall(notified)))
        got_send, got = trio.open_memory_channel[float](10)

        async def work() -> None:
            nonlocal wake
            while True:
                await wake.wait()
                wake = trio.Event()
                rows = await run_aio(claim.fetch(10, "raw"))
                if rows:
                    got_send.send_nowait(time.perf_counter())
                    await run_aio(worker.execute(ack_sql(s), [r[0] for r in rows]))

        enqueue_sql = st.enqueue()

        async def one() -> float:
            t0 = time.perf_counter()
            await run_aio(producer.fetch(enqueue_sql, "default", ['{"n": 0}'], 0, None, None, st.jobs_channel))
            return await got.receive() - t0

        async with trio.open_nursery() as nursery:
            nursery.start_soon(work)
            lat = await sample_latencies(
                one, p, sleep=trio.sleep, read_line=lambda: trio.to_thread.run_sync(sys.stdin.readline)
            )
            nursery.cancel_scope.cancel()
        for c in (listener, worker, relaxed, producer, setup):
            await trio_asyncio.aio_as_trio(c.close)()
    return latency_summary(lat)


def latency(p: dict[str, Any]) -> dict[str, Any]:
    return trio.run(_latency, p)


if __name__ == "__main__":
    bench_main({"latency": latency}, __doc__)
