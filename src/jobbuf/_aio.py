"""Run an asyncio coroutine (asyncpg's) from a trio task, without an asyncio Task.

``trio_asyncio.aio_as_trio`` wraps the coroutine in an asyncio Task: the Task's first step
is scheduled on the loop, and its end is reported through another loop callback before the
trio task wakes. Under trio-asyncio every loop callback costs a trio scheduling round, so a
``SELECT 1`` took 172 us this way against 116 us stepped from the trio task itself (97 us
on plain asyncio), and the enqueue -> take path makes two such round trips (measured here;
the README's benchmark section has the numbers).

:func:`run_aio` steps the coroutine in the calling trio task instead and waits, trio-side,
for each asyncio future it blocks on. That is asyncio's own Task protocol, done by hand:
the coroutine yields the future it waits for, and is resumed once the future is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import trio

__all__ = ["run_aio"]

T = TypeVar("T")


async def run_aio(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end in this trio task and return (or raise) what it does.

    Cancellation, as for ``aio_as_trio``: the first trio cancellation cancels the asyncio
    future the coroutine is waiting on, or, if that future is already done, throws
    ``asyncio.CancelledError`` in at the coroutine's next step (``Task.cancel`` does the
    same); later ones wait for the coroutine, so its cleanup awaits run uncancelled; and
    when it ends with ``asyncio.CancelledError``, ``trio.Cancelled`` is raised. The
    coroutine is closed however this ends.

    Only for coroutines that wait on plain futures of the running trio-asyncio loop and
    do not await again after a cancellation: no asyncio Task exists, so
    ``asyncio.current_task()`` is ``None`` inside, and asyncpg's wait for a cancelled
    statement (``asyncio.timeout``) refuses to run without one. A cancelled transaction's
    ``ROLLBACK`` is such an await; run transactions in a Task (``aio_as_trio``).
    """
    return await _Stepper(coro).run()


class _Stepper(Generic[T]):
    """The state of one :func:`run_aio`: what asyncio's Task keeps for its coroutine."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.coro = coro
        self.raise_cancel: Callable[[], Any] | None = None  # set by the first trio cancellation
        self.error: BaseException | None = None  # to throw into the coroutine at its next step

    async def run(self) -> T:
        coro = self.coro
        try:
            while True:
                try:
                    future = coro.send(None) if self.error is None else coro.throw(self.error)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                except asyncio.CancelledError:
                    if self.raise_cancel is not None:
                        self.raise_cancel()  # the cancellation was ours: raise it as trio's
                    raise
                self.error = None
                if future is None:  # a bare yield (asyncio.sleep(0)): let others run
                    await trio.lowlevel.cancel_shielded_checkpoint()
                elif not getattr(future, "_asyncio_future_blocking", False):
                    self.error = RuntimeError(f"run_aio: the coroutine yielded {future!r}, not an asyncio future")
                else:
                    future._asyncio_future_blocking = False
                    if not future.done():
                        await self._wait(future)
                    # resumed, the coroutine reads the future's result (or exception) itself
        finally:
            coro.close()

    async def _wait(self, future: asyncio.Future[Any]) -> None:
        task = trio.lowlevel.current_task()
        future.add_done_callback(lambda _: trio.lowlevel.reschedule(task))

        def abort(raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:
            if self.raise_cancel is None:  # the first cancellation only
                self.raise_cancel = raise_cancel
                if not future.cancel():  # done already, its callback not yet run: cancel
                    self.error = asyncio.CancelledError()  # the coroutine at its next step
            return trio.lowlevel.Abort.FAILED  # the done callback wakes us either way

        await trio.lowlevel.wait_task_rescheduled(abort)
