"""Connections for ``PostgresJobSource``, handed out on the trio side.

asyncpg's own pool costs several asyncio task switches per acquire/release (it shields
the release in a new task), and under trio-asyncio each switch is expensive: about 130 us
per operation here, on the enqueue -> take latency path twice. So connections are kept
in trio: an operation takes an idle connection (or opens one), runs on it as ONE asyncio
coroutine (queries and transaction together), stepped from the trio task by
``_aio.run_aio``, and gives it back.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
import trio
import trio_asyncio

from ._aio import run_aio

__all__ = ["Connections"]

T = TypeVar("T")


class Connections:
    """At most ``size`` asyncpg connections to ``dsn``, opened on first need.

    Guarantees: a connection is used by one operation at a time. One whose operation was
    cancelled or failed for any reason other than an error reported by the server (which
    leaves the connection usable) is terminated, never reused: a trio cancellation that
    lands mid-query can therefore not leak a half-used connection. ``aclose`` closes idle
    connections within a deadline and terminates the rest.
    """

    def __init__(self, dsn: str, size: int, *, connect_timeout: float, server_settings: dict[str, str] | None):
        self._dsn = dsn
        self._timeout = connect_timeout
        self._settings = server_settings
        self._idle: list[Any] = []
        self._busy: set[Any] = set()
        self._slots = trio.Semaphore(size)

    async def _connect(self) -> Any:
        # No command_timeout: operations are bounded by trio deadlines, and asyncpg's own
        # timeouts do not mix with run_aio's immediate wake-ups (see _aio.Immediate).
        return await trio_asyncio.aio_as_trio(asyncpg.connect)(
            self._dsn, timeout=self._timeout, command_timeout=None, server_settings=self._settings
        )

    async def open(self) -> None:
        """Open the first connection now, so a bad DSN or a down server fails fast."""
        self._idle.append(await self._connect())

    async def run(self, op: Callable[[Any], Coroutine[Any, Any, T]], *, in_task: bool = False) -> T:
        """Run ``op(connection)`` in asyncio, as one hop, on a connection of our own.

        ``in_task`` runs it in an asyncio Task (``aio_as_trio``), which an op that may await
        after a cancellation needs (a transaction's rollback: see ``_aio.run_aio``); other
        ops are stepped from this trio task, which costs less."""
        try:
            self._slots.acquire_nowait()  # the usual case: no scheduling point spent here
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            conn = self._idle.pop() if self._idle else await self._connect()
            self._busy.add(conn)
            reusable = False
            try:
                result: T = await (trio_asyncio.aio_as_trio(op)(conn) if in_task else run_aio(op(conn)))
                reusable = True
                return result
            except (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError):
                raise  # FATAL: the server is closing this session (terminated, shutting down)
            except asyncpg.PostgresError:
                reusable = True  # the server said no to a statement; the connection is fine
                raise
            finally:
                self._busy.discard(conn)
                if reusable and not conn.is_closed() and not conn.is_in_transaction():
                    self._idle.append(conn)
                else:
                    conn.terminate()
        finally:
            self._slots.release()

    async def aclose(self, deadline: float = 5.0) -> None:
        """Close every connection: shielded, idle ones politely within ``deadline``."""
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True):
            with trio.move_on_after(deadline):
                for conn in idle:
                    await trio_asyncio.aio_as_trio(conn.close)(timeout=deadline)
            for conn in [*idle, *self._busy]:
                if not conn.is_closed():
                    conn.terminate()
