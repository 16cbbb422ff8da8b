"""jobbuf latency on an idle buffer: enqueue -> ``take_job`` returning.

One process: a taker task waits in ``take_job`` on an idle buffer (default config); the
producer enqueues one job with ``source.enqueue`` and waits until it is taken (and acked,
untimed) before the next. Wake-up path: NOTIFY -> listener -> poller -> claim -> take.

Cases:
  latency  params: schema, samples, paired (see ``common.sample_latencies``)
"""

from __future__ import annotations

import sys
import time
from typing import Any

import trio

import jobbuf
from common import bench_main, latency_summary, sample_latencies


async def _latency(p: dict[str, Any]) -> dict[str, Any]:
    async with (
        jobbuf.open_postgres_source(str(p["dsn"]), schema=str(p["schema"]), migrate=True) as source,
        jobbuf.open_job_buffer(source, "bench-latency") as buf,
    ):
        send, receive = trio.open_memory_channel[float](1)

        async def taker() -> None:
            while True:
                job = await buf.take_job()
                assert job is not None
                await send.send(time.perf_counter())
                await buf.complete(job)

        async def one() -> float:
            t0 = time.perf_counter()
            await source.enqueue("default", {"n": 0})
            return await receive.receive() - t0

        async with trio.open_nursery() as nursery:
            nursery.start_soon(taker)
            await trio.sleep(0.2)  # the first (empty) claim has run; the buffer is idle
            lat = await sample_latencies(
                one, p, sleep=trio.sleep, read_line=lambda: trio.to_thread.run_sync(sys.stdin.readline)
            )
            nursery.cancel_scope.cancel()
    return latency_summary(lat)


def latency(p: dict[str, Any]) -> dict[str, Any]:
    return trio.run(_latency, p)


if __name__ == "__main__":
    bench_main({"latency": latency}, __doc__)
