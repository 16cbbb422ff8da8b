"""``jobbuf demo``: a lively workload for the monitor (bursts, three buffers, failures, TTL discards)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import trio

from ._buffer import open_job_buffer
from ._config import BufferConfig
from ._job import Job
from ._postgres import PostgresJobSource
from ._workers import Handler, run_workers

__all__ = ["DEMO_BUFFERS", "run_demo"]

# worker id -> (config, concurrency, handler latency range in seconds, failure rate)
DEMO_BUFFERS: dict[str, tuple[BufferConfig, int, tuple[float, float], float]] = {
    "api-fast": (BufferConfig(queues=("emails",), capacity=50, low_water=10, lease=10), 8, (0.01, 0.12), 0.03),
    "batch-big": (
        BufferConfig(queues=("reports", "thumbnails"), capacity=200, low_water=50, batch_size=100, lease=10),
        12, (0.05, 0.4), 0.08,
    ),
    # Few slow workers and a short TTL: entries go stale and are discarded (and released).
    "slowpoke": (
        BufferConfig(queues=("thumbnails",), capacity=40, low_water=40, ttl=2.0, lease=10), 2, (0.2, 0.6), 0.1,
    ),
}  # fmt: skip


async def _produce(source: PostgresJobSource, rng: random.Random) -> None:
    tick = 0
    while True:
        tick += 1
        burst = rng.random() < 0.25
        for queue, base in (("emails", 12), ("reports", 6), ("thumbnails", 10)):
            n = rng.randint(base, base * (8 if burst else 2))
            payloads = [{"n": tick, "i": i, "poison": rng.random() < 0.01} for i in range(n)]
            await source.enqueue_many(queue, payloads, priority=rng.choice((0, 0, 0, 5)), max_attempts=3)
        if tick % 5 == 0:  # some scheduled work, visible as "scheduled" in the monitor
            later = datetime.now(UTC) + timedelta(seconds=rng.uniform(5, 20))
            await source.enqueue_many("reports", [{"scheduled": True}] * 20, run_at=later)
        await trio.sleep(rng.uniform(0.5, 1.5))


def _handler(latency: tuple[float, float], failure_rate: float, rng: random.Random) -> Handler:
    async def handle(job: Job) -> None:
        await trio.sleep(rng.uniform(*latency))
        if job.payload.get("poison") or rng.random() < failure_rate:
            raise RuntimeError(f"demo failure on job {job.id}")

    return handle


async def _report(source: PostgresJobSource, every: float) -> None:
    while True:
        await trio.sleep(every)
        counts = await source.queue_counts()
        line = ", ".join(f"{q.queue}: {q.pending} pending/{q.claimed} claimed/{q.dead} dead" for q in counts)
        print(f"jobbuf demo: {line}", flush=True)


async def run_demo(source: PostgresJobSource, *, duration: float | None = None, seed: int | None = None) -> None:
    """Run the demo until cancelled (or for ``duration`` seconds). Every buffer exits
    cleanly on cancellation, so no claimed rows are left behind."""
    rng = random.Random(seed)
    print(f"jobbuf demo: running on {source.dsn} schema {source.schema!r}; Ctrl-C stops", flush=True)
    with trio.move_on_after(math.inf if duration is None else duration):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_produce, source, rng)
            nursery.start_soon(_report, source, 5.0)
            for worker_id, (config, concurrency, latency, failure_rate) in DEMO_BUFFERS.items():
                nursery.start_soon(_serve, source, worker_id, config, concurrency, _handler(latency, failure_rate, rng))
    print("jobbuf demo: stopped", flush=True)


async def _serve(
    source: PostgresJobSource, worker_id: str, config: BufferConfig, concurrency: int, handler: Handler
) -> None:
    async with open_job_buffer(source, worker_id, config) as buf:
        await run_workers(buf, handler, concurrency=concurrency)
