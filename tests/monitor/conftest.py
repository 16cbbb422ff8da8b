"""Fixtures for the monitor tests: a fresh schema per test, and a read-only role.

The helpers (and the rules every test here follows) are in ``monitor_helpers.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from monitor_helpers import MIGRATIONS, Db, Role, execute, run

from jobbuf_monitor.embedded import test_dsn


@pytest.fixture(scope="session")
def dsn() -> str:
    return test_dsn()


@pytest.fixture
def db(dsn: str) -> Iterator[Db]:
    """A fresh random schema with migration 1 applied; dropped afterwards."""
    schema = f"jbmon_{secrets.token_hex(5)}"
    run(execute(dsn, f'CREATE SCHEMA "{schema}"', MIGRATIONS[0][1].format(s=f'"{schema}"')))
    try:
        yield Db(dsn, schema)
    finally:
        run(execute(dsn, f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def reader(db: Db) -> Iterator[Role]:
    """A read-only role (USAGE + SELECT on the test schema) and a DSN that logs in as it."""
    name = f"jbmon_ro_{secrets.token_hex(4)}"
    try:
        run(execute(db.dsn, f'CREATE ROLE "{name}" LOGIN', f'GRANT USAGE ON SCHEMA {db.s} TO "{name}"',
                    f'GRANT SELECT ON ALL TABLES IN SCHEMA {db.s} TO "{name}"'))  # fmt: skip
    except asyncpg.PostgresError as exc:  # pragma: no cover - only without superuser rights
        pytest.skip(f"cannot create a role on the test server: {exc}")
    parts = urlsplit(db.dsn)
    netloc = f"{name}@{parts.hostname}:{parts.port or 5432}"
    try:
        yield Role(db.dsn, name, urlunsplit(parts._replace(netloc=netloc)))
    finally:
        run(
            execute(
                db.dsn,
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'",
                f'REVOKE ALL ON ALL TABLES IN SCHEMA {db.s} FROM "{name}"',
                f'REVOKE ALL ON SCHEMA {db.s} FROM "{name}"',
                f'DROP ROLE "{name}"',
            )
        )
