"""Two real jobbuf buffers with known, then frozen, counters (run as a subprocess).

Usage: python live_buffers.py DSN SCHEMA. Migrates SCHEMA, starts buffer "alpha" (claims 7
jobs of queue "a", never takes them) and buffer "beta" (3 hand-built jobs offered on an
empty queue "b" and discarded by a 0.3 s TTL), waits until both are stable and published,
prints one JSON line {"alpha": stats, "beta": stats}, then runs until SIGTERM/SIGINT and
exits cleanly (buffers release and deregister).
"""

from __future__ import annotations

import json
import signal
import sys

import trio

from jobbuf import BufferConfig, Job, open_job_buffer, open_postgres_source


async def main(dsn: str, schema: str) -> None:
    async with open_postgres_source(dsn, schema=schema, migrate=True) as source:
        await source.enqueue_many("a", list(range(7)))
        fast = {"stats_interval": 0.2, "poll_interval": 30.0}
        alpha_cfg = BufferConfig(queues=("a",), capacity=10, low_water=10, **fast)
        beta_cfg = BufferConfig(queues=("b",), capacity=5, low_water=1, ttl=0.3, **fast)
        async with (
            open_job_buffer(source, "alpha", alpha_cfg) as alpha,
            open_job_buffer(source, "beta", beta_cfg) as beta,
        ):
            beta.offer_jobs([Job(id=-i, queue="b", payload=None) for i in range(1, 4)])
            with trio.fail_after(20):
                while alpha.depth < 7 or beta.stats().discarded < 3:
                    await trio.sleep(0.05)
            await trio.sleep(0.6)  # a few publishes of the final counters
            print(json.dumps({"alpha": alpha.stats().as_dict(), "beta": beta.stats().as_dict()}), flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    return


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
