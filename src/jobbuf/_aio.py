"""Run an asyncio coroutine (asyncpg's) from a trio task, without an asyncio Task.

``trio_asyncio.aio_as_trio`` wraps the coroutine in an asyncio Task: the Task's first step
is scheduled on the loop, and its end is reported through another loop callback before the
trio task wakes. Under trio-asyncio every loop callback costs a trio scheduling round.

:func:`run_aio` steps the coroutine in the calling trio task instead and waits, trio-side,
for each asyncio future it blocks on. That is asyncio's own Task protocol, done by hand:
the coroutine yields the future it waits for, and is resumed once the future is done.

:func:`run_immediate_callbacks` then removes one more hop. A future's done callbacks go
through ``loop.call_soon``, which under trio-asyncio is a queue served by the loop's own
trio task: one more scheduling round before the waiting task is even woken. Callbacks that
only wake trio tasks are marked :class:`Immediate` and run at once instead.

Two more rounds through that queue are removed the same way, by the same setup:

- asyncpg's own done callback on every query's future (``_on_waiter_completed``) only
  cancels the query when the future was cancelled; for a future that was not, it runs at
  once too (it then only drops an asyncpg-side timeout, which jobbuf does not use).
- After every read from a socket, trio-asyncio's reader task waits for the loop to work
  through its queue (``loop.synchronize``). When nothing is queued, and nothing is handed
  to the loop's task but not yet run, there is nothing to wait for: it returns at once.

A ``SELECT 1`` round trip, medians of three runs of 1,000 on the CI machine of
2026-11-28: 257 us through ``aio_as_trio``, 185 us through ``run_aio``, 158 us with
immediate wake-ups as well, 133 us on plain asyncio (the slower machine of 2026-11-29
measured about 0.57 ms stepped with immediate wake-ups against 0.43 ms on plain asyncio).
The enqueue -> take path makes two such round trips and reads a notification (the
README's benchmark section).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import trio
from asyncpg.protocol import protocol as _asyncpg_protocol

__all__ = ["Immediate", "ImmediateCall", "run_aio", "run_immediate_callbacks"]

T = TypeVar("T")

_QUERY_DONE: object = getattr(_asyncpg_protocol.BaseProtocol, "_on_waiter_completed", object())
"""asyncpg's done callback on a query's future (a fresh object, matching nothing, if a
later asyncpg renames it: its callbacks are then queued as before)."""


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


class Immediate:
    """Base of the loop callbacks that a loop set up by :func:`run_immediate_callbacks` runs
    at once, where they are scheduled, instead of queueing them; any other loop queues
    them as usual.

    Only for callbacks that only wake trio tasks (set an event, reschedule a task). They
    run inside whatever scheduled them (asyncpg's protocol code, for a query's result or a
    notification), in the caller's context, and before callbacks queued earlier; so the
    woken task may run before asyncpg's own cleanup callbacks. One of those cancels the
    connection's asyncpg-side query timeout, which is why queries stepped by
    :func:`run_aio` must not use asyncpg timeouts (``timeout=``, ``command_timeout``):
    jobbuf bounds them with trio deadlines instead. An exception from one is passed to
    the loop's exception handler, never into the code that scheduled it."""

    __slots__ = ()

    def __call__(self, *args: Any) -> None:
        raise NotImplementedError


class ImmediateCall(Immediate):
    """``fn(*args)`` as an :class:`Immediate` callback."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> None:
        self.fn(*args)


class _Wake(Immediate):
    """``run_aio``'s done callback: reschedules the trio task waiting on the future."""

    __slots__ = ("task",)

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task

    def __call__(self, *args: Any) -> None:
        trio.lowlevel.reschedule(self.task)


def run_immediate_callbacks(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop.call_soon`` run :class:`Immediate` callbacks, and asyncpg's done callback
    on a query's future that was not cancelled, at once; every other callback is queued as
    before. Make ``loop.synchronize`` return at once when the loop has nothing queued (see
    the module docstring). For a trio-asyncio loop that this library opened itself.
    ``call_soon`` returns the same cancelled handle for every callback run at once: it has
    already run."""
    queue = loop.call_soon
    done = asyncio.Handle(lambda: None, (), loop)
    done.cancel()

    def call_soon(callback: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.Handle:
        if isinstance(callback, Immediate) or (
            getattr(callback, "__func__", None) is _QUERY_DONE and not args[0].cancelled()
        ):
            try:
                callback(*args)
            except Exception as exc:  # never into asyncpg's protocol code: that breaks the connection
                loop.call_exception_handler({"message": f"immediate callback {callback!r} failed", "exception": exc})
            return done
        return queue(callback, *args, **kwargs)

    loop.call_soon = call_soon  # type: ignore[method-assign,assignment]
    _skip_idle_synchronize(loop)


def _skip_idle_synchronize(loop: asyncio.AbstractEventLoop) -> None:
    """``loop.synchronize()`` waits until the callbacks queued before it have run, by
    queueing one more and waiting for the loop's task to reach it. With an empty queue
    and the loop's task waiting on it, every callback queued before has run: return at
    once. Otherwise (or on a trio-asyncio without these internals) wait as before."""
    slow = getattr(loop, "synchronize", None)
    handles = getattr(loop, "_q_recv", None)
    if slow is None or not isinstance(handles, trio.MemoryReceiveChannel):
        return

    async def synchronize() -> None:
        stats = handles.statistics()
        if stats.current_buffer_used or not stats.tasks_waiting_receive:
            await slow()

    loop.synchronize = synchronize  # type: ignore[attr-defined]


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
        future.add_done_callback(_Wake(trio.lowlevel.current_task()))

        def abort(raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:
            if self.raise_cancel is None:  # the first cancellation only
                self.raise_cancel = raise_cancel
                if not future.cancel():  # done already, its callback not yet run: cancel
                    self.error = asyncio.CancelledError()  # the coroutine at its next step
            # The done callback wakes us either way (an immediate one already has, if the
            # future was cancelled just now: returning FAILED then reschedules nothing).
            return trio.lowlevel.Abort.FAILED

        await trio.lowlevel.wait_task_rescheduled(abort)
