"""``open_postgres_source``: the trio-asyncio loop, connections and listener of a source."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import trio
import trio_asyncio

from jobbuf_monitor.embedded import dsn_parse_error, redact_dsn

from ._aio import run_immediate_callbacks
from ._config import check_identifier
from ._connections import Connections
from ._errors import ConfigError, DatabaseUnavailableError
from ._postgres import TRANSIENT, PostgresJobSource, reason
from ._sql import Statements
from ._trio_util import single_error

__all__ = ["open_postgres_source"]

log = logging.getLogger("jobbuf.postgres")


def _check_dsn(dsn: object) -> str:
    if not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://")):
        shown = redact_dsn(dsn) if isinstance(dsn, str) else repr(dsn)
        raise ConfigError(f"dsn={shown!r} is invalid: use a URL like postgresql://user@host:5432/dbname")
    return dsn


def _log_loop_exception(loop: Any, context: dict[str, Any]) -> None:
    # trio-asyncio's default handler re-raises, which would kill the whole loop (§3).
    log.warning("asyncio: %s", redact_dsn(str(context.get("message"))), exc_info=context.get("exception"))


@asynccontextmanager
async def open_postgres_source(
    dsn: str,
    *,
    schema: str = "jobbuf",
    migrate: bool = False,
    keep_completed: bool = False,
    pool_size: int = 10,
    retry_timeout: float = 10.0,
    connect_timeout: float = 5.0,
    operation_timeout: float = 30.0,
    application_name: str | None = None,
) -> AsyncIterator[PostgresJobSource]:
    """Open a trio-asyncio loop, up to ``pool_size`` connections for durable operations
    (plus as many for claims and heartbeats) and a LISTEN connection on ``dsn``.

    ``application_name``, when given, is set on every connection (pool and LISTEN), so
    this source's sessions can be told apart in ``pg_stat_activity`` (monitoring, or
    fault-injection tests that terminate only their own backends). An operation with no
    answer within ``operation_timeout`` seconds is abandoned (its connection terminated)
    and handled like a lost connection: retried within ``retry_timeout`` where allowed,
    else :class:`DatabaseUnavailableError`.

    Raises :class:`ConfigError` for a malformed DSN, schema name or option (``pool_size``
    an int >= 1, ``retry_timeout`` >= 0, the other timeouts > 0; ``math.inf`` means no
    limit, except for ``connect_timeout``),
    :class:`DatabaseUnavailableError` when the server cannot be reached, and
    :class:`SchemaError` when the schema is missing (unless ``migrate=True``, which creates
    or upgrades it). On exit every connection is closed, shielded, within a deadline.
    """
    dsn = _check_dsn(dsn)
    check_identifier("schema", schema)
    if len(schema) > 48:
        raise ConfigError(f"schema={schema!r} is too long: use at most 48 characters")
    _server_settings(application_name)  # validate eagerly, before any connection
    _check_options(pool_size, retry_timeout, connect_timeout, operation_timeout)
    with single_error():
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(_log_loop_exception)
            run_immediate_callbacks(loop)
            settings = _server_settings(application_name)
            durable = Connections(dsn, pool_size, connect_timeout=connect_timeout, server_settings=settings)
            relaxed = Connections(
                dsn, pool_size, connect_timeout=connect_timeout,
                server_settings={**(settings or {}), "synchronous_commit": "off"},
            )  # fmt: skip
            await _open(durable, dsn)
            try:
                source = PostgresJobSource(
                    durable, relaxed, dsn, Statements(schema), keep_completed=keep_completed,
                    retry_timeout=retry_timeout, operation_timeout=operation_timeout,
                    application_name=application_name,
                )  # fmt: skip
                if migrate:
                    source.migrated = await source.migrate()
                else:
                    await source.check_schema()
                async with trio.open_nursery() as nursery:
                    await nursery.start(source.listener.run)
                    yield source
                    nursery.cancel_scope.cancel()
            finally:
                await relaxed.aclose()
                await durable.aclose()


def _check_options(pool_size: int, retry_timeout: float, connect_timeout: float, operation_timeout: float) -> None:
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ConfigError(f"pool_size={pool_size!r} is invalid: it must be an int >= 1")

    def seconds(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    checks = (  # NaN fails every comparison
        ("retry_timeout", retry_timeout, seconds(retry_timeout) and retry_timeout >= 0, ">= 0 (0: no retries)"),
        ("connect_timeout", connect_timeout, seconds(connect_timeout) and 0 < connect_timeout < math.inf,
         "> 0 and finite"),
        ("operation_timeout", operation_timeout, seconds(operation_timeout) and operation_timeout > 0, "> 0"),
    )  # fmt: skip
    for name, value, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{name}={value!r} is invalid: it must be seconds {rule}")


def _server_settings(application_name: str | None) -> dict[str, str] | None:
    """asyncpg ``server_settings`` for an optional ``application_name``."""
    if application_name is None:
        return None
    if not isinstance(application_name, str) or not application_name.isprintable() or len(application_name) > 63:
        raise ConfigError(
            f"application_name={application_name!r} is invalid: use a printable string of at most 63 characters"
        )
    return {"application_name": application_name}


async def _open(connections: Connections, dsn: str) -> None:
    try:
        await connections.open()
    except (asyncpg.ClientConfigurationError, ValueError) as exc:
        raise ConfigError(f"dsn {redact_dsn(dsn)!r} is invalid: {dsn_parse_error(exc, dsn)}") from None
    except (*TRANSIENT, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailableError(f"cannot connect to {redact_dsn(dsn)}: {reason(exc)}") from None
