"""take_job overhead: a full buffer vs a bare ``trio.open_memory_channel`` receive.

Same process, same loop, interleaved: the buffer (``MemoryJobSource``, capacity large,
low_water 1 so the poller stays asleep) is filled with ``offer_jobs`` of hand-built Jobs
(untimed), then ``ops`` ``take_job`` calls are timed; the channel is filled with
``send_nowait`` (untimed) and ``ops`` ``receive`` calls are timed. Repeated ``rounds``
times; medians of ns/op are reported.

Cases:
  take  params: ops, rounds
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import trio

import jobbuf
from common import bench_main


async def _take(p: dict[str, Any]) -> dict[str, Any]:
    ops, rounds = int(p.get("ops", 20000)), int(p.get("rounds", 7))
    config = jobbuf.BufferConfig(capacity=ops, low_water=1, ttl=3600.0)
    jobs = [jobbuf.Job(id=i, queue="default", payload={"n": i}) for i in range(ops)]
    take_ns: list[float] = []
    chan_ns: list[float] = []
    async with jobbuf.open_job_buffer(jobbuf.MemoryJobSource(), "bench-take", config) as buf:
        send, receive = trio.open_memory_channel[jobbuf.Job](ops)
        for _ in range(rounds):
            assert buf.offer_jobs(jobs) == ops
            t0 = time.perf_counter_ns()
            for _ in range(ops):
                await buf.take_job()
            take_ns.append((time.perf_counter_ns() - t0) / ops)
            for job in jobs:
                send.send_nowait(job)
            t0 = time.perf_counter_ns()
            for _ in range(ops):
                await receive.receive()
            chan_ns.append((time.perf_counter_ns() - t0) / ops)
    take, chan = statistics.median(take_ns), statistics.median(chan_ns)
    return {"take_ns": take, "channel_ns": chan, "ratio": take / chan, "ops": ops, "rounds": rounds}


def take(p: dict[str, Any]) -> dict[str, Any]:
    return trio.run(_take, p)


if __name__ == "__main__":
    bench_main({"take": take}, __doc__)
