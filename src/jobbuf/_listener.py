"""The dedicated LISTEN connection that wakes buffers when jobs become ready (enqueued,
released or requeued: each such statement sends one NOTIFY per queue)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from itertools import count
from typing import Any

import asyncpg
import trio
import trio_asyncio

from jobbuf_monitor.embedded import redact_dsn

from . import _jitter
from ._aio import ImmediateCall

__all__ = ["Listener"]

log = logging.getLogger("jobbuf.listener")
_CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Listener:
    """One LISTEN connection, outside the pool, fanned out to subscribers by queue name.

    Guarantees: a notification only wakes (callbacks are hints; polling is what makes the
    buffer correct). Callbacks run in trio and never see an exception from here. If the
    connection dies or stops answering, or the session fails in any other way (logged with
    its traceback), ``run`` reconnects with backoff and jitter and, once back, wakes every
    subscriber, since notifications sent meanwhile are lost. Only cancellation (or
    another BaseException, such as KeyboardInterrupt) ends it.
    """

    def __init__(
        self,
        dsn: str,
        channel: str,
        *,
        health_interval: float = 10.0,
        health_timeout: float = 5.0,
        application_name: str | None = None,
    ) -> None:
        self._dsn = dsn
        # Same application_name as the source's pool, so its session is identifiable too.
        self._server_settings = None if application_name is None else {"application_name": application_name}
        self._channel = channel
        self._health_interval = health_interval
        self._health_timeout = health_timeout
        self._subscribers: dict[int, tuple[frozenset[str], Callable[[], None]]] = {}
        self._ids = count()
        self.connected = False
        """Whether the LISTEN connection is up now."""
        self.reconnects = 0
        self.errors = 0
        self.last_error: str | None = None
        self.backend_pid: int | None = None
        """Server pid of the LISTEN connection (for fault-injection tests)."""

    def subscribe(self, queues: Collection[str], callback: Callable[[], None]) -> Callable[[], None]:
        """Register ``callback`` for ``queues``; return the function that unsubscribes."""
        key = next(self._ids)
        self._subscribers[key] = (frozenset(queues), callback)

        def unsubscribe() -> None:
            self._subscribers.pop(key, None)

        return unsubscribe

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # An asyncio callback, run synchronously inside trio by trio-asyncio: Immediate, so
        # at once, inside asyncpg's read of the notification. Subscribers only set a
        # trio.Event (which coalesces bursts), so they are called right here: a hand-off
        # through a channel and a dispatch task cost a task switch per wake-up on the
        # enqueue -> take latency path. Nothing raises out of here (_wake logs).
        self._wake(payload)

    def _wake(self, queue: str | None) -> None:
        for queues, callback in list(self._subscribers.values()):
            if queue is None or queue in queues:
                try:
                    callback()
                except Exception:
                    log.exception("jobbuf wake-up callback failed")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a LISTEN connection up until cancelled. Reports started after the first
        attempt either way: buffers poll while the listener is down."""
        delay = 0.1
        started = False

        def report_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        def connected() -> None:
            nonlocal delay
            delay = 0.1  # the backoff starts over only after a connection that worked
            report_started()

        while True:
            try:
                await self._session(connected)
            except Exception as exc:  # any: a notification is only a hint, never worth the source
                self.errors += 1
                self.last_error = redact_dsn(f"{type(exc).__name__}: {exc}")
                if isinstance(exc, _CONNECT_ERRORS):
                    log.warning("jobbuf listener lost (%s); reconnecting", self.last_error)
                else:  # not a lost connection: keep the traceback, it may be a bug
                    log.error("jobbuf listener failed (%s); reconnecting", self.last_error, exc_info=exc)
            report_started()
            await trio.sleep(delay * _jitter.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)
            self.reconnects += 1

    async def _session(self, up: Callable[[], None]) -> None:
        lost = trio.Event()

        async def connect() -> Any:
            conn = await asyncpg.connect(self._dsn, timeout=5, server_settings=self._server_settings)
            try:
                await conn.add_listener(self._channel, ImmediateCall(self._on_notify))
            except BaseException:
                conn.terminate()
                raise
            conn.add_termination_listener(lambda _conn: lost.set())
            return conn

        conn = await trio_asyncio.aio_as_trio(connect)()
        try:
            self.connected = True
            self.backend_pid = conn.get_server_pid()
            up()
            self._wake(None)  # anything enqueued while we were not listening
            while not lost.is_set():
                with trio.move_on_after(self._health_interval):
                    await lost.wait()
                if not lost.is_set():  # a silent network loss shows only when we ask
                    with trio.move_on_after(self._health_timeout) as check:
                        await trio_asyncio.aio_as_trio(conn.fetchval)("SELECT 1")
                    if check.cancelled_caught:
                        raise ConnectionResetError(
                            f"LISTEN connection did not answer a health check within {self._health_timeout:g}s"
                        )
            raise ConnectionResetError("LISTEN connection closed")
        finally:
            self.connected = False
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await trio_asyncio.aio_as_trio(conn.close)(timeout=2)
            conn.terminate()
