"""The monitor against real, live jobbuf buffers running in another process."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from monitor_helpers import Db, execute, run, wait_for
from test_app import drive, rows
from textual.pilot import Pilot

from jobbuf_monitor.app import MonitorApp

HERE = Path(__file__).parent


@pytest.fixture
def db(dsn: str) -> Iterator[Db]:
    """A fresh schema name; live_buffers.py migrates it the way users do."""
    schema = f"jbmon_live_{secrets.token_hex(6)}"
    try:
        yield Db(dsn, schema)
    finally:
        run(execute(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture
def live(db: Db) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "live_buffers.py"), db.dsn, db.schema],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by the script's own fail_after
        assert line, "live_buffers.py exited before reporting"
        yield proc, json.loads(line)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_once_json_matches_live_buffers_stats(db: Db, live: tuple[subprocess.Popen[str], dict[str, Any]]) -> None:
    _, stats = live
    out = subprocess.run(
        [sys.executable, "-m", "jobbuf_monitor", "--dsn", db.dsn, "--schema", db.schema, "--once", "--json"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    workers = {w["worker_id"]: w for w in json.loads(out.stdout)["workers"]}
    assert set(workers) == {"alpha", "beta"}
    for name in ("alpha", "beta"):
        for field in ("depth", "claimed", "discarded", "taken", "released", "instance"):
            assert workers[name][field] == stats[name][field], (name, field)
        assert workers[name]["state"] == "live"
    assert (stats["alpha"]["depth"], stats["alpha"]["claimed"], stats["beta"]["discarded"]) == (7, 7, 3)


def test_app_shows_live_buffers_and_marks_a_frozen_one_stale(
    db: Db, live: tuple[subprocess.Popen[str], dict[str, Any]]
) -> None:
    proc, _ = live

    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(lambda: set(rows(app)) == {"alpha", "beta"})
        table = rows(app)
        assert "7/10" in table["alpha"][3] and table["alpha"][4] == "7"  # depth, claimed
        assert table["beta"][6] == "3"  # discarded
        os.kill(proc.pid, signal.SIGSTOP)  # heartbeats stop: stale after 3 x stats_interval
        try:
            await wait_for(lambda: all("STALE" in r[2] for r in rows(app).values()), timeout=10)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        await wait_for(lambda: all("live" in r[2] for r in rows(app).values()), timeout=10)

    drive(MonitorApp(db.dsn, schema=db.schema, refresh=0.2), script)
