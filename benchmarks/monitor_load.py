"""Is jobbuf-monitor responsive with 50 live buffers publishing every second?

    python benchmarks/monitor_load.py [--dsn DSN] [--buffers 50] [--seconds 20]

Starts N real buffers (one trio process, ``stats_interval=1.0``, idle) on a fresh schema,
then runs the monitor app headless (Textual ``run_test``) on plain asyncio for a while and
measures, side by side with the same app watching 0 buffers:

- event-loop lag: how late a 20 ms asyncio timer fires (p50 / p99 / max);
- key latency: ``pilot.press("s")`` (sort) until processed, p50 / max;
- refreshes rendered per second, and the time to read one snapshot from PostgreSQL.

Prints a markdown table (also written to ``benchmarks/results/monitor.md``). A benchmark,
not a test: nothing here asserts a wall-clock bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _buffers_main(dsn: str, schema: str, n: int) -> None:
    import trio

    from jobbuf import BufferConfig, open_job_buffer, open_postgres_source

    async def main() -> None:
        async with open_postgres_source(dsn, schema=schema) as source, trio.open_nursery() as nursery:
            cfg = BufferConfig(stats_interval=1.0, poll_interval=2.0)

            async def one(i: int) -> None:
                async with open_job_buffer(source, f"load-{i:02d}", cfg):
                    await trio.sleep_forever()

            for i in range(n):
                nursery.start_soon(one, i)
            await trio.sleep(2.0)
            print("ready", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

    trio.run(main)


async def _measure(dsn: str, schema: str, seconds: float) -> dict[str, float]:
    import asyncpg

    from jobbuf_monitor.app import MonitorApp
    from jobbuf_monitor.feed import read_snapshot

    conn = await asyncpg.connect(dsn)
    reads = []
    for _ in range(20):
        t0 = time.perf_counter()
        snap = await read_snapshot(conn, schema)
        reads.append(time.perf_counter() - t0)
    await conn.close()
    app = MonitorApp(dsn, schema=schema, refresh=1.0)
    lags: list[float] = []
    keys: list[float] = []
    async with app.run_test(size=(150, 60)) as pilot:
        await asyncio.sleep(2.0)  # first snapshot and layout
        start_updates, t_start = app.updates, time.perf_counter()
        deadline = t_start + seconds
        next_key = t_start + 0.5
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await asyncio.sleep(0.02)
            lags.append(time.perf_counter() - t0 - 0.02)
            if time.perf_counter() >= next_key:
                k0 = time.perf_counter()
                await pilot.press("s")
                keys.append(time.perf_counter() - k0)
                next_key += 0.5
        updates = (app.updates - start_updates) / (time.perf_counter() - t_start)
    q = statistics.quantiles(lags, n=100)
    return {
        "workers": len(snap.workers),
        "lag_p50_ms": q[49] * 1e3,
        "lag_p99_ms": q[98] * 1e3,
        "lag_max_ms": max(lags) * 1e3,
        "key_p50_ms": statistics.median(keys) * 1e3,
        "key_max_ms": max(keys) * 1e3,
        "updates_per_s": updates,
        "snapshot_read_ms": statistics.median(reads) * 1e3,
    }


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, timeout=120, **kw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("JOBBUF_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--buffers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--serve", nargs=2, metavar=("SCHEMA", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _buffers_main(args.dsn, args.serve[0], int(args.serve[1]))
        return
    results: dict[str, dict[str, float]] = {}
    for n in (0, args.buffers):
        schema = f"jobbuf_bench_mon_{uuid.uuid4().hex[:8]}"
        _run([sys.executable, "-m", "jobbuf", "--dsn", args.dsn, "--schema", schema, "migrate"])
        proc = subprocess.Popen(
            [sys.executable, __file__, "--dsn", args.dsn, "--serve", schema, str(n)],
            stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            runner = asyncio.Runner(loop_factory=asyncio.SelectorEventLoop)
            with runner:
                results[str(n)] = runner.run(_measure(args.dsn, schema, args.seconds))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            _run(["psql", args.dsn, "-qc", f'DROP SCHEMA "{schema}" CASCADE'])
        print(f"{n} buffers: {json.dumps(results[str(n)])}", file=sys.stderr)
    base, load = results["0"], results[str(args.buffers)]
    rows = [
        ("live workers shown", "workers", "{:.0f}"),
        ("event-loop lag p50 (ms)", "lag_p50_ms", "{:.2f}"),
        ("event-loop lag p99 (ms)", "lag_p99_ms", "{:.2f}"),
        ("event-loop lag max (ms)", "lag_max_ms", "{:.1f}"),
        ("key press handled p50 (ms)", "key_p50_ms", "{:.1f}"),
        ("key press handled max (ms)", "key_max_ms", "{:.1f}"),
        ("screen refreshes per second", "updates_per_s", "{:.2f}"),
        ("snapshot read (ms, median)", "snapshot_read_ms", "{:.2f}"),
    ]
    lines = [f"| metric | 0 buffers | {args.buffers} buffers |", "|---|---|---|"]
    lines += [f"| {label} | {fmt.format(base[key])} | {fmt.format(load[key])} |" for label, key, fmt in rows]
    table = "\n".join(lines)
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "monitor.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
