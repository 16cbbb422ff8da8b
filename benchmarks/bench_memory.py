"""Memory: RSS growth per 10,000 buffered jobs (psutil).

A buffer on ``MemoryJobSource`` with a large capacity is given ``n`` hand-built Jobs
(small payloads, built and offered in the measured section). RSS is read after
``gc.collect()`` before and after; the growth is reported per 10,000 jobs, together with
tracemalloc's count of the same section (less noisy than RSS).

Cases:
  memory  params: n
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import psutil
import trio

import jobbuf
from common import bench_main


async def _fill(n: int, traced: bool) -> int:
    """Bytes gained by buffering ``n`` new jobs: RSS, or tracemalloc's count if ``traced``
    (tracemalloc inflates RSS itself, so the two are measured in separate buffers)."""
    proc = psutil.Process()
    config = jobbuf.BufferConfig(capacity=n, low_water=1, ttl=3600.0)
    async with jobbuf.open_job_buffer(jobbuf.MemoryJobSource(), "bench-memory", config) as buf:
        gc.collect()
        if traced:
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
        rss0 = proc.memory_info().rss
        taken = buf.offer_jobs(jobbuf.Job(id=i, queue="default", payload={"n": i}) for i in range(n))
        gc.collect()
        grown = proc.memory_info().rss - rss0
        if traced:
            grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
            tracemalloc.stop()
        assert taken == n and buf.depth == n
    return grown


async def _memory(p: dict[str, Any]) -> dict[str, Any]:
    n = int(p.get("n", 100_000))
    rss = await _fill(n, traced=False)
    traced = await _fill(n, traced=True)
    per = 10_000 / n
    return {"rss_per_10k_bytes": rss * per, "traced_per_10k_bytes": traced * per, "n": n}


def memory(p: dict[str, Any]) -> dict[str, Any]:
    return trio.run(_memory, p)


if __name__ == "__main__":
    bench_main({"memory": memory}, __doc__)
