"""Run an asyncio coroutine (asyncpg's) from a trio task, without an asyncio Task.

``trio_asyncio.aio_as_trio`` wraps the coroutine in an asyncio Task: the Task's first step
is scheduled on the loop, and its end is reported through another loop callback before the
trio task wakes. Under trio-asyncio every loop callback costs a trio scheduling round, so a
``SELECT 1`` took about 190 us this way against 140 us stepped from the trio task itself,
and the enqueue -> take path makes two such round trips (measured here; the README's
benchmark section has the numbers).

:func:`run_aio` steps the coroutine in the calling trio task instead and waits, trio-side,
for each asyncio future it blocks on. That is asyncio's own Task protocol, done by hand:
the coroutine yields the future it waits for, and is resumed once the future is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import trio

__all__ = ["run_aio"]

T = TypeVar("T")


async def run_aio(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end in this trio task and return (or raise) what it does.

    Guarantees, as for ``aio_as_trio``: a trio cancellation cancels the asyncio future the
    coroutine is waiting on (once; as ``Task.cancel`` would), lets the coroutine handle
    that, and raises ``trio.Cancelled`` if it ends with ``asyncio.CancelledError``; the
    coroutine is closed however this ends. Only for coroutines that wait on plain asyncio
    futures of the running trio-asyncio loop (asyncpg's queries): no Task exists, so
    ``asyncio.current_task()`` is ``None`` inside (``asyncio.timeout`` would refuse).
    """
    raise_cancel: Callable[[], Any] | None = None
    error: BaseException | None = None  # to throw into the coroutine at its next step
    try:
        while True:
            try:
                future = coro.send(None) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            except asyncio.CancelledError:
                if raise_cancel is not None:
                    raise_cancel()  # the cancellation was ours: raise it as trio's
                raise
            error = None
            if future is None:  # a bare yield (asyncio.sleep(0)): let others run
                await trio.lowlevel.cancel_shielded_checkpoint()
            elif not getattr(future, "_asyncio_future_blocking", False):
                error = RuntimeError(f"run_aio: the coroutine yielded {future!r}, not an asyncio future")
            else:
                future._asyncio_future_blocking = False
                if not future.done():
                    raise_cancel = await _wait(future, raise_cancel)
                # resumed, the coroutine reads the future's result (or exception) itself
    finally:
        coro.close()


async def _wait(future: asyncio.Future[Any], raise_cancel: Callable[[], Any] | None) -> Callable[[], Any] | None:
    """Wait until ``future`` is done; return the cancel-raiser of a trio cancellation
    that arrived meanwhile (the first one only: later ones wait for the coroutine)."""
    task = trio.lowlevel.current_task()
    future.add_done_callback(lambda _: trio.lowlevel.reschedule(task))

    def abort(raise_cancel_now: Callable[[], Any]) -> trio.lowlevel.Abort:
        nonlocal raise_cancel
        if raise_cancel is None:
            raise_cancel = raise_cancel_now
            future.cancel()  # the done callback then wakes us
        return trio.lowlevel.Abort.FAILED

    await trio.lowlevel.wait_task_rescheduled(abort)
    return raise_cancel
