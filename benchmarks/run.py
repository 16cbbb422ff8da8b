"""Run every jobbuf benchmark, interleaved, and print a markdown table of medians and ratios.

Usage::

    python benchmarks/run.py              # full run: 3 repetitions, N=50,000 (4-10 min, by the machine)
    python benchmarks/run.py --quick      # smoke run: 1 repetition, small sizes (under 1 min)
    python benchmarks/run.py --reps 5 --only drain,latency

Options (also ``--help``):
  --reps R          repetitions (default 3; 1 with --quick). Every benchmark runs once per
                    repetition, interleaved with the others; medians are reported.
  --quick           small sizes (N=5,000, 30 latency samples, 100k "big" rows, fewer sweep
                    points) for a smoke run of under a minute.
  --n N             jobs per drain (default 50,000).
  --samples S       latency samples per system (default 200).
  --big-rows R      the "large table" size for the claim-latency scale test (default 1,000,000).
  --only LIST       comma-separated subset of: drain, peer, raw, latency, take, scale, memory.
  --timeout SEC     per-subprocess time limit (default 300); a run past it is killed and
                    reported as an error.
  --dsn DSN         PostgreSQL to use (default $JOBBUF_BENCH_DSN or postgresql://postgres@127.0.0.1:5432/test).

Every benchmark runs in its own subprocess: jobbuf ones on trio (trio-asyncio), raw asyncpg
and pgqueuer ones on plain asyncio, since importing trio_asyncio patches asyncio for the
whole process. The latency benchmarks run at the same time, idle but for their
turns: each round takes 10 samples in a row from each, in a shuffled order, so the
ratios compare samples taken moments apart (the machine's speed drifts by tens of percent
between runs). A second, diagnostic latency run alternates sample by sample, so that each
sample follows other systems' samples. Each gets a fresh schema, which this driver drops
when the subprocess ends (even if it crashed). Results: the table on stdout and in
``benchmarks/results/latest.md``, everything in ``benchmarks/results/latest.json``;
subprocess logs in ``results/run.log``.
Ratios are computed from medians measured in this same run. No wall-clock number here is a
test assertion: the machine is noisy; read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from common import BENCH_DIR, DSN, RESULT_PREFIX, WARMUP, median, new_schema
from report import render

RESULTS = BENCH_DIR / "results"
ALL = ("drain", "peer", "raw", "latency", "take", "scale", "memory")


@dataclass
class Plan:
    reps: int
    n: int
    samples: int
    big_rows: int
    only: set[str]
    timeout: float
    dsn: str
    jobbuf_sweep: list[dict[str, int]]
    peer_sweep: list[dict[str, int]]
    procs: tuple[int, ...] = (1, 2, 4)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))


def make_plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    jobbuf_sweep = [
        {"capacity": 200, "low_water": 100, "concurrency": 50},
        {"capacity": 500, "low_water": 250, "concurrency": 100},
        {"capacity": 1000, "low_water": 500, "concurrency": 50},
        {"capacity": 1000, "low_water": 500, "concurrency": 200},
        {"capacity": 2000, "low_water": 1000, "concurrency": 200},
        {"capacity": 4000, "low_water": 2500, "concurrency": 200},
        # batch_size < low_water: claims pipelined (up to 4 in flight)
        {"capacity": 3000, "low_water": 2000, "batch_size": 1000, "concurrency": 50},
        {"capacity": 4000, "low_water": 3000, "batch_size": 1000, "concurrency": 50},
        {"capacity": 8000, "low_water": 6000, "batch_size": 2000, "concurrency": 100},
    ]
    peer_sweep = [{"batch": 10, "qms": 1}, {"batch": 100, "qms": 1}, {"batch": 100, "qms": 2},
                  {"batch": 500, "qms": 1}, {"batch": 500, "qms": 2}]  # fmt: skip
    if quick:
        jobbuf_sweep, peer_sweep = jobbuf_sweep[1:3], peer_sweep[1:3]
    return Plan(
        reps=args.reps if args.reps is not None else (1 if quick else 3),
        n=args.n if args.n is not None else (5_000 if quick else 50_000),
        samples=args.samples if args.samples is not None else (30 if quick else 200),
        big_rows=args.big_rows if args.big_rows is not None else (100_000 if quick else 1_000_000),
        only=set(args.only.split(",")) if args.only else set(ALL),
        timeout=args.timeout, dsn=args.dsn, jobbuf_sweep=jobbuf_sweep, peer_sweep=peer_sweep,
    )  # fmt: skip


async def _drop(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET client_min_messages = warning")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def run_case(plan: Plan, key: str, script: str, case: str, params: dict[str, Any], tag: str | None) -> dict[str, Any]:
    """Run one benchmark subprocess (fresh schema if ``tag``), record and return its result."""
    params = {**params, "dsn": plan.dsn}
    if tag is not None:
        params["schema"] = new_schema(tag)
    cmd = [sys.executable, str(BENCH_DIR / script), case, "--params", json.dumps(params)]
    t0 = time.perf_counter()
    result: dict[str, Any]
    try:
        with open(RESULTS / "run.log", "a") as logf:
            logf.write(f"\n$ {' '.join(cmd)}\n")
            logf.flush()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=logf, text=True, timeout=plan.timeout)
        lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
        if proc.returncode != 0 or not lines:
            result = {"error": f"exit {proc.returncode}; see results/run.log"}
        else:
            result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    except subprocess.TimeoutExpired:
        result = {"error": f"timed out after {plan.timeout:g}s"}
    finally:
        if tag is not None:
            asyncio.run(_drop(plan.dsn, params["schema"]))
    result = {**{k: v for k, v in params.items() if k not in ("dsn", "schema")}, **result}
    plan.results[key].append(result)
    brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if k != "plan_head"}
    print(f"  {key:<32} {time.perf_counter() - t0:6.1f}s  {brief}", file=sys.stderr, flush=True)
    return result


LATENCY: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("jobbuf", "bench_latency.py", {}),
    ("raw", "bench_raw.py", {}),
    ("rawtrio", "bench_raw.py", {"loop": "trio-asyncio"}),  # diagnostic: the floor's code on trio-asyncio
    ("rawstep", "bench_stepped.py", {}),  # diagnostic: the floor's code on trio, stepped as jobbuf steps asyncpg
    ("peer", "bench_peer.py", {}),
)


LATENCY_BLOCK = 10
"""Samples a system takes in a row on its turn, in the block-wise latency run."""


def run_latency_paired(plan: Plan, rep: int, block: int, prefix: str) -> None:
    """The latency benchmarks at once, taking turns: each round asks every system for
    ``block`` samples in a row, so all of them see the same machine. The order is
    shuffled every round (seeded by ``rep``): no system always follows the same one.
    With ``block=1`` the systems alternate sample by sample, each sample coming right
    after other systems' samples (the diagnostic run). Results go under
    ``prefix:system``."""
    t0 = time.perf_counter()
    procs: list[tuple[str, str, subprocess.Popen[str]]] = []
    logf = open(RESULTS / "run.log", "a")  # noqa: SIM115 - closed in finally
    # A watchdog: a process that stops answering is killed, which ends the blocking reads.
    watchdog = threading.Timer(plan.timeout, lambda: [proc.kill() for _, _, proc in procs])
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, script, extra in LATENCY:
            params = {"samples": plan.samples, "paired": True, "dsn": plan.dsn, "schema": new_schema("lat"), **extra}
            cmd = [sys.executable, str(BENCH_DIR / script), "latency", "--params", json.dumps(params)]
            logf.write(f"\n$ {' '.join(cmd)}\n")
            logf.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, text=True)
            procs.append((name, params["schema"], proc))
        watchdog.start()
        for _, _, proc in procs:
            _expect(proc, "READY")
        total, rng, order = WARMUP + plan.samples, random.Random(rep), [proc for _, _, proc in procs]
        for first in range(0, total, block):
            rng.shuffle(order)
            for proc in order:
                for _ in range(min(block, total - first)):
                    proc.stdin.write("go\n")  # type: ignore[union-attr]
                    proc.stdin.flush()  # type: ignore[union-attr]
                    _expect(proc, "done")
        for name, _, proc in procs:
            out, _ = proc.communicate("stop\n", timeout=plan.timeout)
            lines = [x for x in out.splitlines() if x.startswith(RESULT_PREFIX)]
            if proc.returncode == 0 and lines:
                results[name] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"  {prefix}: {exc!r}; see results/run.log", file=sys.stderr, flush=True)
    finally:
        watchdog.cancel()
        for _, schema, proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            asyncio.run(_drop(plan.dsn, schema))
        logf.close()
    for name, _, _ in procs:
        result = {"samples": plan.samples, **results.get(name, {"error": "failed; see results/run.log"})}
        key = f"{prefix}:{name}"
        plan.results[key].append(result)
        brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}
        print(f"  {key:<32} {time.perf_counter() - t0:6.1f}s  {brief}", file=sys.stderr, flush=True)


def _expect(proc: subprocess.Popen[str], word: str) -> None:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if line.strip() != word:
        raise ValueError(f"expected {word!r} from {proc.args[1]}, got {line.strip()[:200]!r}")  # type: ignore[index]


def cfg_key(prefix: str, cfg: dict[str, int]) -> str:
    return prefix + ":" + ",".join(f"{k}={v}" for k, v in cfg.items())


def best_of(plan: Plan, prefix: str) -> tuple[str, float]:
    """The key with the highest median jobs/s among keys starting with ``prefix``."""
    best, best_v = "", -math.inf
    for key, rows in plan.results.items():
        if key.startswith(prefix + ":"):
            v = median([r["jobs_per_s"] for r in rows if "jobs_per_s" in r])
            if v > best_v:
                best, best_v = key, v
    return best, best_v


def one_rep(plan: Plan, rep: int, multi_cfg: dict[str, int] | None) -> dict[str, int] | None:
    n, only = plan.n, plan.only
    if "drain" in only:
        run_case(plan, "drain:default", "bench_drain.py", "drain", {"n": n, "concurrency": 10}, "drain")
        for cfg in plan.jobbuf_sweep:
            run_case(plan, cfg_key("drain", cfg), "bench_drain.py", "drain", {"n": n, **cfg}, "drain")
    if "raw" in only:
        for batch in sorted({c.get("batch_size", c["capacity"]) for c in plan.jobbuf_sweep} | {50}):
            for sql in ("raw", "jobbuf"):
                run_case(plan, cfg_key("raw" if sql == "raw" else "rawsql", {"batch": batch, "conns": 2}),
                         "bench_raw.py", "drain", {"n": n, "batch": batch, "conns": 2, "sql": sql}, "raw")  # fmt: skip
    if "peer" in only:
        for cfg in plan.peer_sweep:
            run_case(plan, cfg_key("peer", cfg), "bench_peer.py", "drain", {"n": n, **cfg}, "peer")
    if "latency" in only:
        run_latency_paired(plan, rep, LATENCY_BLOCK, "latency")
        run_latency_paired(plan, rep, 1, "latency_alternating")
    if "take" in only:
        run_case(plan, "take", "bench_take.py", "take", {}, None)
    if "memory" in only:
        run_case(plan, "memory", "bench_memory.py", "memory", {}, None)
    if "scale" in only:
        for rows in (10_000, plan.big_rows):
            run_case(plan, f"claim:{rows}", "bench_scale.py", "claim", {"rows": rows}, "scale")
        if multi_cfg is None:  # frozen after the first repetition, so medians compare like with like
            best = best_of(plan, "drain")[0]
            multi_cfg = dict(plan.jobbuf_sweep[0]) if not best else {
                k: int(v) for k, v in (x.split("=") for x in best.split(":", 1)[1].split(","))
            }  # fmt: skip
        for procs in plan.procs:
            run_case(plan, f"multi:{procs}", "bench_scale.py", "multi", {"n": n, "procs": procs, **multi_cfg}, "multi")
        # The database alone, at the same batch: does the raw SQL itself drain faster with
        # twice the connections (a second jobbuf process doubles them)? Both counts are run
        # here, back to back, rather than reusing the raw sweep's 2-connection run from
        # minutes before: the machine's speed drifts.
        batch = multi_cfg.get("batch_size", multi_cfg["capacity"])
        for conns in (2, 4):
            params = {"n": n, "batch": batch, "conns": conns}
            run_case(plan, f"rawconns:{conns}", "bench_raw.py", "drain", params, "raw")
    return multi_cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--big-rows", type=int, default=None)
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--dsn", default=DSN)
    args = parser.parse_args()
    plan = make_plan(args)
    unknown = plan.only - set(ALL)
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {sorted(unknown)}; choose from {','.join(ALL)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "run.log").write_text("")
    t0 = time.perf_counter()
    multi_cfg: dict[str, int] | None = None
    for rep in range(plan.reps):
        print(f"repetition {rep + 1}/{plan.reps}", file=sys.stderr, flush=True)
        multi_cfg = one_rep(plan, rep, multi_cfg)
    elapsed = time.perf_counter() - t0
    header = (
        f"jobbuf benchmarks: {plan.reps} repetition(s), N={plan.n:,}, {plan.samples} latency samples, "
        f"big table {plan.big_rows:,} rows; {os.cpu_count()} CPUs; run took {elapsed / 60:.1f} min; "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    md, summary = render(plan.results, header, multi_cfg)
    print(md)
    (RESULTS / "latest.md").write_text(md + "\n")
    (RESULTS / "latest.json").write_text(
        json.dumps({"header": header, "summary": summary, "runs": plan.results}, indent=1, default=str)
    )


if __name__ == "__main__":
    main()
