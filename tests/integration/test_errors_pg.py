"""Documented errors for bad DSNs, unreachable servers and missing schemas, from the API and the CLIs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio

from jobbuf import ConfigError, DatabaseUnavailableError, SchemaError, open_postgres_source
from jobbuf.testing.plugin import fresh_schema_name

UNREACHABLE = "postgresql://postgres:hunter2@127.0.0.1:1/test"


@pytest.mark.parametrize("dsn", ["", "localhost", "mysql://u@h/db", "postgresql://u:p@h:notaport/db"])
async def test_malformed_dsn_is_a_config_error(dsn: str) -> None:
    with trio.fail_after(10), pytest.raises(ConfigError) as info:
        async with open_postgres_source(dsn):
            pass
    assert "dsn" in str(info.value)
    assert ":p@" not in str(info.value)


async def test_unreachable_server_is_database_unavailable_without_password() -> None:
    with trio.fail_after(15), pytest.raises(DatabaseUnavailableError) as info:
        async with open_postgres_source(UNREACHABLE):
            pass
    assert isinstance(info.value, ConnectionError)
    assert "127.0.0.1:1" in str(info.value)
    assert "hunter2" not in str(info.value)


async def test_missing_database_is_database_unavailable(jobbuf_dsn: str) -> None:
    dsn = jobbuf_dsn.rsplit("/", 1)[0] + "/no_such_db_jobbuf"
    if "?" in jobbuf_dsn:
        pytest.skip("embedded DSN carries a socket query string")
    with trio.fail_after(15), pytest.raises(DatabaseUnavailableError, match="no_such_db_jobbuf"):
        async with open_postgres_source(dsn):
            pass


async def test_missing_schema_is_a_schema_error_naming_the_fix(jobbuf_dsn: str) -> None:
    schema = fresh_schema_name()
    with trio.fail_after(15), pytest.raises(SchemaError) as info:
        async with open_postgres_source(jobbuf_dsn, schema=schema):
            pass
    assert schema in str(info.value)
    assert "jobbuf migrate" in str(info.value) and "migrate=True" in str(info.value)


@pytest.mark.parametrize("schema", ["", "1abc", "a-b", 'x"; DROP TABLE y; --', "a" * 49])
async def test_bad_schema_name_is_a_config_error(jobbuf_dsn: str, schema: str) -> None:
    with trio.fail_after(10), pytest.raises(ConfigError, match="schema"):
        async with open_postgres_source(jobbuf_dsn, schema=schema):
            pass


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["jobbuf", "--dsn", UNREACHABLE, "status"], "cannot connect to postgresql://postgres:***@127.0.0.1:1/test"),
        (["jobbuf", "--dsn", "nonsense", "status"], "dsn='nonsense' is invalid"),
        (["jobbuf", "--schema", "jobbuf_no_such_schema", "status"], "jobbuf migrate"),
        (["jobbuf", "enqueue", "default", "{not json"], "is not JSON"),
        (["jobbuf", "enqueue", "bad queue", "{}"], "queue='bad queue' is not a valid name"),
    ],
)
def test_cli_errors_are_one_line_exit_2(jobbuf_dsn: str, argv: list[str], expected: str) -> None:
    result = _cli(*argv, env={"JOBBUF_DSN": jobbuf_dsn})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_cli_migrate_enqueue_status_roundtrip(jobbuf_dsn: str) -> None:
    from jobbuf.testing.plugin import drop_schema

    schema = fresh_schema_name()
    env = {"JOBBUF_DSN": jobbuf_dsn}
    try:
        first = _cli("jobbuf", "--schema", schema, "migrate", env=env)
        assert first.returncode == 0 and "applied migration(s) [1]" in first.stdout
        again = _cli("jobbuf", "--schema", schema, "migrate", env=env)
        assert again.returncode == 0 and "already up to date" in again.stdout
        enq = _cli("jobbuf", "--schema", schema, "enqueue", "mail", '{"to": "x"}', "--count", "3", env=env)
        assert enq.returncode == 0 and "enqueued 3 job(s)" in enq.stdout
        status = _cli("jobbuf", "--schema", schema, "status", "--json", env=env)
        assert status.returncode == 0
        import json

        (queue,) = json.loads(status.stdout)["queues"]
        assert (queue["queue"], queue["pending"], queue["claimed"]) == ("mail", 3, 0)
    finally:
        drop_schema(jobbuf_dsn, schema)


def test_cli_requeue_puts_dead_jobs_back(jobbuf_dsn: str) -> None:
    from jobbuf.testing.plugin import drop_schema

    schema = fresh_schema_name()
    env = {"JOBBUF_DSN": jobbuf_dsn}
    try:
        assert _cli("jobbuf", "--schema", schema, "migrate", env=env).returncode == 0
        assert _cli("jobbuf", "--schema", schema, "enqueue", "mail", "{}", "--count", "2", env=env).returncode == 0
        from pg_helpers import _run_sql

        _run_sql(jobbuf_dsn, f"UPDATE \"{schema}\".jobs SET status = 'dead', attempts = 3, last_error = 'x'", ())
        out = _cli("jobbuf", "--schema", schema, "requeue", "mail", "--dead", env=env)
        assert out.returncode == 0 and "requeued 2 dead job(s)" in out.stdout
        rows = _run_sql(jobbuf_dsn, f'SELECT status, attempts FROM "{schema}".jobs', ())
        assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0), ("pending", 0)]
        missing_flag = _cli("jobbuf", "--schema", schema, "requeue", "mail", env=env)
        assert missing_flag.returncode == 2  # argparse: --dead is required
    finally:
        drop_schema(jobbuf_dsn, schema)


def test_cli_enqueue_of_many_jobs_reports_progress(jobbuf_dsn: str) -> None:
    from jobbuf.testing.plugin import drop_schema

    schema = fresh_schema_name()
    env = {"JOBBUF_DSN": jobbuf_dsn}
    try:
        assert _cli("jobbuf", "--schema", schema, "migrate", env=env).returncode == 0
        out = _cli("jobbuf", "--schema", schema, "enqueue", "bulk", "{}", "--count", "12345", env=env)
        assert out.returncode == 0, out.stderr
        assert out.stderr.splitlines() == ["jobbuf: enqueued 10000/12345", "jobbuf: enqueued 12345/12345"]
        assert "enqueued 12345 job(s) on 'bulk'" in out.stdout
    finally:
        drop_schema(jobbuf_dsn, schema)
