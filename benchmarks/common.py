"""Shared helpers for the benchmark scripts: DSN, schema names, stats, result protocol.

Nothing here imports ``jobbuf`` or ``trio_asyncio``: importing ``trio_asyncio`` patches
asyncio process-wide, so the asyncio-based benchmarks (raw asyncpg, pgqueuer) must never
pull it in. jobbuf's SQL text is loaded from ``_sql.py`` by file path for the same reason.

Each ``bench_*.py`` script is run as a subprocess by ``run.py``:
``python benchmarks/bench_x.py CASE --params '{json}'``. It prints exactly one line
``RESULT {json}`` on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

DSN = os.environ.get("JOBBUF_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/test")
BENCH_DIR = Path(__file__).resolve().parent
RESULT_PREFIX = "RESULT "


def new_schema(tag: str) -> str:
    """A fresh, valid schema name (run.py drops it after the subprocess ends)."""
    return f"jbb_{tag}_{uuid.uuid4().hex[:10]}"


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank-with-interpolation percentile, ``p`` in [0, 100]."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


WARMUP = 5
"""Latency samples each process takes and discards before measuring."""
IDLE = 0.002
"""Seconds a latency benchmark stays idle after each sample (its ack lands meanwhile)."""


async def sample_latencies(
    one: Callable[[], Awaitable[float]],
    p: dict[str, Any],
    *,
    sleep: Callable[[float], Awaitable[Any]],
    read_line: Callable[[], Awaitable[str]],
) -> list[float]:
    """Latency samples of ``one()`` (seconds each), after ``WARMUP`` discarded ones.

    Alone, it takes ``p["samples"]`` in a row. With ``p["paired"]`` it takes one per "go"
    line on stdin and answers each with a "done" line, until "stop": ``run.py`` then takes
    turns between the systems (a block of samples each per round, or one each), so that
    drift in the machine's speed (large here) hits every system alike and the ratios
    compare like with like.
    ``sleep`` and ``read_line`` are the event loop's own (trio's or asyncio's)."""
    lat: list[float] = []
    if p.get("paired"):
        print("READY", flush=True)
        while (await read_line()).strip() == "go":
            lat.append(await one())
            await sleep(IDLE)
            print("done", flush=True)
    else:
        for _ in range(WARMUP + int(p.get("samples", 200))):
            lat.append(await one())
            await sleep(IDLE)
    return lat[WARMUP:]


async def read_stdin_line() -> str:
    """One line of stdin, read in a thread (``read_line`` for asyncio benchmarks)."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000.0 for s in seconds]
    return {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99), "n": len(ms)}


def load_jobbuf_sql() -> ModuleType:
    """``jobbuf._sql`` loaded by file path, without running ``jobbuf/__init__`` (which
    imports trio_asyncio)."""
    spec = importlib.util.find_spec("jobbuf")
    assert spec is not None and spec.submodule_search_locations, "jobbuf is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "_sql.py"
    mod_spec = importlib.util.spec_from_file_location("_jobbuf_sql_standalone", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_spec.name] = module  # dataclasses needs the module registered
    mod_spec.loader.exec_module(module)
    return module


def migration_sql(schema: str) -> list[str]:
    """The statements that create jobbuf's schema (same tables and indexes as ``migrate``)."""
    sqlmod = load_jobbuf_sql()
    st = sqlmod.Statements(schema)
    out = [st.migrate_prelude()]
    for version, script in sqlmod.MIGRATIONS:
        out.append(script.format(s=st.s))
        out.append(f"INSERT INTO {st.s}.schema_version (version) VALUES ({int(version)})")
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def bench_main(cases: dict[str, Callable[[dict[str, Any]], dict[str, Any]]], doc: str | None) -> None:
    """Command line of every bench script: ``CASE --params JSON`` -> ``RESULT {json}``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=sorted(cases))
    parser.add_argument("--params", default="{}", help="JSON object of parameters for the case")
    args = parser.parse_args()
    params: dict[str, Any] = json.loads(args.params)
    params.setdefault("dsn", DSN)
    emit(cases[args.case](params))
