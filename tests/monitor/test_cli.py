"""``python -m jobbuf_monitor`` as a subprocess: JSON output, one-line errors, --demo, no trio."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from monitor_helpers import ROOT, Db, run

from jobbuf_monitor.__main__ import stop_child


def monitor(*args: str, timeout: float = 30.0, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "JOBBUF_DSN"}
    environment.update(PYTHONPATH=str(ROOT / "monitor"), **env)
    return subprocess.run(
        [sys.executable, "-m", "jobbuf_monitor", *args],
        capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT,
    )  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("jobbuf-monitor: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_once_json_prints_workers_and_queues(db: Db) -> None:
    async def seed() -> None:
        await db.add_worker("api-1", host="web-1", pid=42, depth=5, claimed=9, discarded=1)
        await db.add_jobs("default", 3)

    run(seed())
    proc = monitor("--dsn", db.dsn, "--schema", db.schema, "--once", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"workers", "queues"}
    (worker,) = doc["workers"]
    assert {"worker_id", "instance", "host", "pid", "state", "heartbeat_age"} <= set(worker)
    assert (worker["worker_id"], worker["host"], worker["pid"], worker["state"]) == ("api-1", "web-1", 42, "live")
    assert (worker["depth"], worker["claimed"], worker["discarded"], worker["completed"]) == (5, 9, 1, 0)
    (queue,) = doc["queues"]
    assert {"queue", "pending", "scheduled", "claimed", "dead", "done", "oldest_pending_age"} <= set(queue)
    assert (queue["queue"], queue["pending"]) == ("default", 3)


def test_once_plain_text_and_dsn_from_environment(db: Db) -> None:
    run(db.add_worker("api-1", depth=5, capacity=50))
    proc = monitor("--schema", db.schema, "--once", JOBBUF_DSN=db.dsn)
    assert proc.returncode == 0, proc.stderr
    assert "api-1" in proc.stdout and "5/50" in proc.stdout


def test_unreachable_server_exits_2_with_one_redacted_line() -> None:
    proc = monitor("--dsn", "postgresql://alice:topsecret@127.0.0.1:1/db", "--once", "--json")
    assert_one_line_error(proc, "cannot connect to postgresql://alice:***@127.0.0.1:1/db")
    assert "topsecret" not in proc.stderr


def test_malformed_dsn_exits_2_with_one_line() -> None:
    proc = monitor("--dsn", "mysql://bob:pw@x/y", timeout=30)
    assert_one_line_error(proc, "dsn 'mysql://bob:***@x/y' is invalid: invalid DSN: scheme is expected")


def test_missing_schema_exits_2_and_names_the_fix(dsn: str) -> None:
    proc = monitor("--dsn", dsn, "--schema", "jbmon_nonexistent")
    assert_one_line_error(proc, 'schema "jbmon_nonexistent" not found: run jobbuf migrate --dsn')


def test_missing_schema_hint_never_shows_a_redacted_dsn(dsn: str) -> None:
    secret = dsn.replace("://postgres@", "://postgres:hunter2@")  # trust auth ignores it
    assert "hunter2" in secret
    proc = monitor("--dsn", secret, "--schema", "jbmon_nonexistent")
    assert_one_line_error(proc, 'schema "jbmon_nonexistent" not found: run jobbuf migrate --dsn <your DSN> --schema')


def test_queue_takes_jobbuf_queue_names(db: Db) -> None:
    long_name = "q" * 63  # jobbuf's longest; the monitor allowed only 48 (the schema rule)
    proc = monitor("--schema", db.schema, "--queue", long_name, "--once", JOBBUF_DSN=db.dsn)
    assert proc.returncode == 0, proc.stderr
    proc = monitor("--dsn", "postgresql://x@127.0.0.1:1/y", "--queue", "q" * 64)
    assert_one_line_error(proc, f"--queue '{'q' * 64}' is not a valid name: use 1-63 letters")


def test_invalid_schema_name_exits_2() -> None:
    proc = monitor("--dsn", "postgresql://x@127.0.0.1:1/y", "--schema", "bad;name")
    assert_one_line_error(proc, "not a valid name")


def test_monitor_never_imports_trio() -> None:
    code = textwrap.dedent(
        """
        import sys
        import jobbuf_monitor.__main__, jobbuf_monitor.app, jobbuf_monitor.feed, jobbuf_monitor.widgets
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("trio", "trio_asyncio", "jobbuf"))
        assert not leaked, leaked
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'monitor'}{os.pathsep}{ROOT / 'src'}"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr


STUB = """
import os, signal, sys, time
out = sys.argv[1]
with open(out, "w") as f:
    f.write(f"started {os.getpid()} {os.environ['JOBBUF_DSN']}\\n")
def stop(signum, frame):
    with open(out, "a") as f:
        f.write(f"stopped by {signum}\\n")
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
while True:
    time.sleep(0.05)
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_runs_the_workload_and_stops_it_on_exit(db: Db, tmp_path: Path) -> None:
    stub, log, shot = tmp_path / "stub.py", tmp_path / "stub.log", tmp_path / "shot.svg"
    stub.write_text(STUB)
    run(db.add_worker("demo-1", depth=10, capacity=50))
    proc = monitor(
        "--dsn", db.dsn, "--schema", db.schema, "--demo", "--screenshot", str(shot), "--screenshot-after", "1.5",
        JOBBUF_MONITOR_DEMO_CMD=f"{sys.executable} {stub} {log}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    started, stopped = log.read_text().splitlines()
    assert started.endswith(db.dsn) and stopped == f"stopped by {int(signal.SIGINT)}"
    assert not pid_alive(int(started.split()[1]))
    svg = shot.read_text()
    assert svg.startswith("<svg") and "demo-1" in svg and "jobbuf-monitor" in svg


def test_stop_child_kills_a_workload_that_ignores_sigint() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert stop_child(child, timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5
    child.stdout.close()


@pytest.mark.parametrize("argv", [["--json"], ["--refresh", "0"]])
def test_bad_option_combinations_exit_2(argv: list[str]) -> None:
    assert_one_line_error(monitor("--dsn", "postgresql://x@127.0.0.1:1/y", *argv))
