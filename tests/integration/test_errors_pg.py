"""Documented errors for bad DSNs, unreachable servers and missing schemas, from the API and the CLIs."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import trio

from jobbuf import ConfigError, DatabaseUnavailableError, SchemaError, open_postgres_source
from jobbuf._sql import Statements
from jobbuf.testing.plugin import drop_schema, fresh_schema_name
from pg_helpers import _run_sql

UNREACHABLE = "postgresql://postgres:hunter2@127.0.0.1:1/test"


@pytest.mark.parametrize("dsn", ["", "localhost", "mysql://u@h/db", "postgresql://u:p@h:notaport/db"])
async def test_malformed_dsn_is_a_config_error(dsn: str) -> None:
    with trio.fail_after(10), pytest.raises(ConfigError) as info:
        async with open_postgres_source(dsn):
            pass
    assert "dsn" in str(info.value)
    assert ":p@" not in str(info.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [("pool_size", 0), ("pool_size", -1), ("pool_size", 2.0), ("retry_timeout", math.nan), ("retry_timeout", -1),
     ("connect_timeout", 0), ("operation_timeout", 0), ("connect_timeout", math.inf), ("connect_timeout", "5")],
)  # fmt: skip
async def test_bad_options_are_config_errors_before_connecting(option: str, value: object) -> None:
    # Regression: pool_size=0 waited operation_timeout out, then blamed the database;
    # pool_size=-1 was a bare ValueError; a NaN retry_timeout was taken.
    with trio.fail_after(5), pytest.raises(ConfigError, match=f"{option}={value!r} is invalid: it must be"):
        async with open_postgres_source(UNREACHABLE, **{option: value}):  # type: ignore[arg-type]
            pass


async def test_no_limit_is_math_inf(jobbuf_dsn: str) -> None:
    schema = fresh_schema_name()  # dropped at the session's end
    with trio.fail_after(30):
        async with open_postgres_source(
            jobbuf_dsn, schema=schema, migrate=True, retry_timeout=math.inf, operation_timeout=math.inf
        ) as source:
            assert await source.enqueue("default", {}) > 0


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


async def test_missing_schema_hint_never_shows_a_redacted_dsn(jobbuf_dsn: str) -> None:
    # A hint with "postgres:***@" would not work if copied: a placeholder is named instead.
    url = urlsplit(jobbuf_dsn)
    if url.password is not None or url.username is None or url.query:
        pytest.skip("needs a URL DSN without a password (the local trust-auth server)")
    with_password = urlunsplit(url._replace(netloc=url.netloc.replace(url.username, f"{url.username}:hunter2", 1)))
    schema = fresh_schema_name()
    with trio.fail_after(15), pytest.raises(SchemaError) as info:
        async with open_postgres_source(with_password, schema=schema):
            pass
    message = str(info.value)
    assert f"jobbuf migrate --dsn <your DSN> --schema {schema}" in message
    assert "hunter2" not in message


async def test_migrate_cancelled_while_another_migrates_is_a_plain_cancellation(jobbuf_dsn: str) -> None:
    # Regression: a cancelled migration's transaction awaits a ROLLBACK after the
    # cancellation, which asyncpg runs under asyncio.timeout: with no asyncio Task around
    # the query that raised RuntimeError ("Timeout should be used inside a task").
    schema = fresh_schema_name()
    held, done = threading.Event(), threading.Event()

    def hold_the_migration_lock() -> None:
        async def hold() -> None:
            conn = await asyncpg.connect(jobbuf_dsn)
            try:
                async with conn.transaction():
                    await conn.execute(Statements(schema).migrate_lock(), schema)
                    held.set()
                    while not done.is_set():
                        await asyncio.sleep(0.01)
            finally:
                await conn.close()

        asyncio.run(hold())

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, hold_the_migration_lock)
            try:
                assert await trio.to_thread.run_sync(held.wait, 10)
                with trio.move_on_after(0.5) as waited:
                    async with open_postgres_source(jobbuf_dsn, schema=schema, migrate=True):
                        pytest.fail("migrated although another migrator holds the lock")
            finally:
                done.set()
    assert waited.cancelled_caught


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
        (["jobbuf", "enqueue", "default", "[NaN]"], "is not JSON"),
        (["jobbuf", "enqueue", "default", "{}", "--delay", "inf"], "--delay=inf is invalid"),
        (["jobbuf", "enqueue", "default", "{}", "--delay", "-5"], "--delay=-5.0 is invalid"),
        (["jobbuf", "enqueue", "bad queue", "{}"], "queue='bad queue' is not a valid name"),
    ],
)
def test_cli_errors_are_one_line_exit_2(jobbuf_dsn: str, argv: list[str], expected: str) -> None:
    result = _cli(*argv, env={"JOBBUF_DSN": jobbuf_dsn})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


@pytest.mark.parametrize("password", ["Xy9#secret", "Xy9/secret", "Xy9?secret@x"])
@pytest.mark.parametrize("program", ["jobbuf", "jobbuf_monitor"])
def test_cli_never_shows_a_password_with_reserved_characters(program: str, password: str) -> None:
    # Regression: such a password was shown whole, or in pieces quoted by the DSN parser.
    dsn = f"postgresql://postgres:{password}@127.0.0.1:1/test"
    result = _cli(program, "--dsn", dsn, "status" if program == "jobbuf" else "--once")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Xy9" not in result.stderr and "secret" not in result.stderr, result.stderr
    assert "postgres:***@" in result.stderr, result.stderr


@pytest.mark.parametrize("program", ["jobbuf", "jobbuf_monitor"])
def test_no_dsn_and_no_pgserver_is_one_line_naming_the_fix(tmp_path: Path, program: str) -> None:
    # On Python 3.13 pgserver has no build, so the embedded server cannot start there.
    (tmp_path / "pgserver.py").write_text("raise ImportError('no pgserver here')\n")
    paths = [str(tmp_path), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env = {k: v for k, v in os.environ.items() if k != "JOBBUF_DSN"}
    result = subprocess.run(
        [sys.executable, "-m", program, "status" if program == "jobbuf" else "--once"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**env, "PYTHONPATH": os.pathsep.join(p for p in paths if p)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "needs the pgserver package" in result.stderr and "--dsn" in result.stderr


@dataclass
class Cli:
    """``jobbuf --schema SCHEMA ARGS...`` run as a subprocess against the test DSN."""

    dsn: str
    schema: str

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _cli("jobbuf", "--schema", self.schema, *args, env={"JOBBUF_DSN": self.dsn})


@pytest.fixture
def jobbuf_cli(jobbuf_dsn: str) -> Iterator[Cli]:
    """The CLI on a fresh schema, dropped after the test."""
    cli = Cli(jobbuf_dsn, fresh_schema_name())
    try:
        yield cli
    finally:
        drop_schema(jobbuf_dsn, cli.schema)


def test_cli_migrate_enqueue_status_roundtrip(jobbuf_cli: Cli) -> None:
    first = jobbuf_cli("migrate")
    assert first.returncode == 0 and "applied migration(s) [1]" in first.stdout
    again = jobbuf_cli("migrate")
    assert again.returncode == 0 and "already up to date" in again.stdout
    enq = jobbuf_cli("enqueue", "mail", '{"to": "x"}', "--count", "3")
    assert enq.returncode == 0 and "enqueued 3 job(s)" in enq.stdout
    status = jobbuf_cli("status", "--json")
    assert status.returncode == 0
    (queue,) = json.loads(status.stdout)["queues"]
    assert (queue["queue"], queue["pending"], queue["claimed"]) == ("mail", 3, 0)


def test_cli_takes_options_after_the_command_and_server_errors_are_one_line(jobbuf_dsn: str, jobbuf_cli: Cli) -> None:
    # `jobbuf COMMAND --dsn ... --schema ...`, as the missing-schema hint writes it, works too.
    migrate = _cli("jobbuf", "migrate", "--dsn", jobbuf_dsn, "--schema", jobbuf_cli.schema)
    assert migrate.returncode == 0 and f"schema {jobbuf_cli.schema!r}" in migrate.stdout, migrate.stderr
    # A server error jobbuf has no class for is one line too, not a traceback.
    read_only = jobbuf_dsn + ("&" if "?" in jobbuf_dsn else "?") + "default_transaction_read_only=on"
    result = _cli("jobbuf", "--schema", jobbuf_cli.schema, "enqueue", "mail", "{}", "--dsn", read_only)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "read-only transaction" in result.stderr


def test_cli_a_second_ctrl_c_during_the_cleanup_is_absorbed(jobbuf_dsn: str, jobbuf_cli: Cli) -> None:
    # Regression: the first SIGINT closed the signal receiver, so a second one raised a raw
    # KeyboardInterrupt in the middle of the cleanup (which can hang trio-asyncio).
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobbuf", "--schema", jobbuf_cli.schema, "demo"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "JOBBUF_DSN": jobbuf_dsn},
    )  # fmt: skip
    locked, done = threading.Event(), threading.Event()

    async def hold_the_jobs_table() -> None:  # the exit's acks and releases wait for it
        conn = await asyncpg.connect(jobbuf_dsn)
        try:
            async with conn.transaction():
                await conn.execute(f'LOCK TABLE "{jobbuf_cli.schema}".jobs IN ACCESS EXCLUSIVE MODE')
                locked.set()
                await asyncio.sleep(2)
        finally:
            await conn.close()
            done.set()

    try:
        assert "running" in (proc.stdout.readline() if proc.stdout else ""), "the demo did not start"
        threading.Thread(target=asyncio.run, args=(hold_the_jobs_table(),), daemon=True).start()
        assert locked.wait(30)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # the exit is waiting for the lock now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        done.wait(30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_cli_requeue_puts_dead_jobs_back(jobbuf_dsn: str, jobbuf_cli: Cli) -> None:
    schema = jobbuf_cli.schema
    assert jobbuf_cli("migrate").returncode == 0
    assert jobbuf_cli("enqueue", "mail", "{}", "--count", "2").returncode == 0
    _run_sql(jobbuf_dsn, f"UPDATE \"{schema}\".jobs SET status = 'dead', attempts = 3, last_error = 'x'", ())
    out = jobbuf_cli("requeue", "mail", "--dead")
    assert out.returncode == 0 and "requeued 2 dead job(s)" in out.stdout
    rows = _run_sql(jobbuf_dsn, f'SELECT status, attempts FROM "{schema}".jobs', ())
    assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0), ("pending", 0)]
    assert jobbuf_cli("requeue", "mail").returncode == 2  # argparse: --dead is required


def test_cli_enqueue_of_many_jobs_reports_progress(jobbuf_cli: Cli) -> None:
    assert jobbuf_cli("migrate").returncode == 0
    out = jobbuf_cli("enqueue", "bulk", "{}", "--count", "12345")
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["jobbuf: enqueued 10000/12345", "jobbuf: enqueued 12345/12345"]
    assert "enqueued 12345 job(s) on 'bulk'" in out.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_interrupted_enqueue_says_how_far_it_got_and_exits_128_plus_signal(
    jobbuf_dsn: str, jobbuf_cli: Cli, signum: signal.Signals
) -> None:
    # Regression: an interrupted `enqueue --count N` exited 0 and said nothing.
    assert jobbuf_cli("migrate").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobbuf", "--schema", jobbuf_cli.schema, "enqueue", "bulk", "{}", "--count", "10000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "JOBBUF_DSN": jobbuf_dsn},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline() == "jobbuf: enqueued 10000/10000000\n"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    lines = [line for line in err.splitlines() if not line.startswith("jobbuf: enqueued ") or " of " in line]
    assert len(lines) == 2 and lines[1] == f"jobbuf: enqueue interrupted by {signum.name}", err
    reported = int(lines[0].split()[2])
    assert reported >= 10000 and lines[0] == (
        f"jobbuf: enqueued {reported} of 10000000, and 10000 more may have been added"
        " by the statement that was interrupted"
    ), err
    count = _run_sql(jobbuf_dsn, f'SELECT count(*) AS n FROM "{jobbuf_cli.schema}".jobs', ())[0]["n"]
    assert count in (reported, reported + 10000) and out == ""


@pytest.fixture
def app_role(jobbuf_dsn: str) -> Iterator[tuple[str, str]]:
    """(schema, DSN) for a role that may use a migrated schema but create nothing, with a
    connection limit of 2; the role and the schema are dropped after the test."""
    schema, role = fresh_schema_name(), f"jobbuf_app_{os.urandom(4).hex()}"
    url = urlsplit(jobbuf_dsn)
    netloc = role + url.netloc[url.netloc.index("@") :] if "@" in url.netloc else f"{role}@{url.netloc}"
    grants = [  # a new role may not create schemas in the database (PostgreSQL's default)
        f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2",
        f'GRANT USAGE ON SCHEMA "{schema}" TO {role}',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO {role}',
        f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role}',
    ]

    async def migrate() -> None:
        async with open_postgres_source(jobbuf_dsn, schema=schema, migrate=True):
            pass

    trio.run(migrate)
    for statement in grants:
        _run_sql(jobbuf_dsn, statement, ())
    try:
        yield schema, urlunsplit(url._replace(netloc=netloc))
    finally:
        drop_schema(jobbuf_dsn, schema)
        _run_sql(jobbuf_dsn, f"DROP OWNED BY {role}", ())
        _run_sql(jobbuf_dsn, f"DROP ROLE {role}", ())


async def test_a_role_that_cannot_create_opens_an_up_to_date_schema_with_migrate(app_role: tuple[str, str]) -> None:
    # Regression: migrate=True always ran CREATE SCHEMA IF NOT EXISTS, refused for want of
    # the CREATE right even when there was nothing to create.
    schema, dsn = app_role
    with trio.fail_after(30):
        async with open_postgres_source(dsn, schema=schema, migrate=True) as source:
            assert source.migrated == []
            assert await source.enqueue("default", {"n": 1}) > 0


async def test_the_connection_limit_is_a_passing_unavailability_retried(app_role: tuple[str, str]) -> None:
    # Regression: TooManyConnectionsError escaped raw from enqueue, not retried.
    schema, dsn = app_role
    with trio.fail_after(30):
        async with open_postgres_source(dsn, schema=schema, retry_timeout=20) as source:
            # The pool's first connection and the LISTEN one are the role's 2: a second
            # enqueue at once needs a third connection, refused until the first is free.
            ids: list[int] = []

            async def one(n: int) -> None:
                ids.append(await source.enqueue("default", {"n": n}))

            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(one, n)
            assert len(ids) == 3
