"""A jobbuf worker process for the reliability tests (run with ``sys.executable``).

It opens a source on ``--dsn``/``--schema``, runs a buffer plus ``run_workers`` whose
handler sleeps ``--sleep`` seconds, INSERTs the job id into ``"<schema>".audit`` and
returns. It prints ``ready`` once the buffer runs (and, with ``--announce``, ``took <id>``
when a handler starts). SIGTERM and SIGINT become cancellation, so a signalled worker
exits cleanly (exit status 0) after releasing what it holds; SIGKILL is the crash case.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from functools import partial
from typing import Any

import asyncpg
import trio
import trio_asyncio

from jobbuf import BufferConfig, Job, open_job_buffer, open_postgres_source, run_workers


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--schema", required=True)
    p.add_argument("--worker-id", default=f"proc-{os.getpid()}")
    p.add_argument("--app-name", default=None)
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--heartbeat", type=float, default=0.5)
    p.add_argument("--capacity", type=int, default=10)
    p.add_argument("--low-water", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=5)
    p.add_argument("--poll-interval", type=float, default=0.2)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--announce", action="store_true")
    return p.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    cfg = BufferConfig(
        capacity=args.capacity, low_water=args.low_water, lease=args.lease, heartbeat_interval=args.heartbeat,
        poll_interval=args.poll_interval, shutdown_timeout=5.0,
    )  # fmt: skip
    audit = f'INSERT INTO "{args.schema}".audit (job_id, pid) VALUES ($1, $2)'
    pid = os.getpid()
    async with open_postgres_source(args.dsn, schema=args.schema, application_name=args.app_name) as source:
        pool: Any = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(args.dsn, min_size=1, max_size=4)

        async def handler(job: Job) -> None:
            if args.announce:
                print(f"took {job.id}", flush=True)
            await trio.sleep(args.sleep)
            await trio_asyncio.aio_as_trio(pool.execute)(audit, job.id, pid)

        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with open_job_buffer(source, args.worker_id, cfg) as buf, trio.open_nursery() as nursery:
                    nursery.start_soon(partial(run_workers, buf, handler, concurrency=args.concurrency))
                    print("ready", flush=True)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await trio_asyncio.aio_as_trio(pool.close)()


if __name__ == "__main__":
    trio.run(main, parse(sys.argv[1:]))
