"""``run_aio``: an asyncio coroutine stepped from a trio task (how every query runs), on a
plain trio-asyncio loop and on one whose ``Immediate`` callbacks run at once (as jobbuf
sets up its own: every test runs on both)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio_asyncio

import jobbuf._aio
from jobbuf._aio import ImmediateCall, run_aio, run_immediate_callbacks


@pytest.fixture(params=["queued", "immediate"])
async def loop(request: pytest.FixtureRequest) -> AsyncIterator[asyncio.AbstractEventLoop]:
    async with trio_asyncio.open_loop() as loop:
        if request.param == "immediate":
            run_immediate_callbacks(loop)
        yield loop


async def test_immediate_callbacks_run_at_once_and_others_are_queued_as_before() -> None:
    seen: list[str] = []
    async with trio_asyncio.open_loop() as loop:
        loop.call_soon(ImmediateCall(seen.append), "immediate, queued")  # not set up yet
        run_immediate_callbacks(loop)
        loop.call_soon(seen.append, "plain")
        handle = loop.call_soon(ImmediateCall(seen.append), "immediate")
        assert seen == ["immediate"]  # ran inside call_soon
        handle.cancel()  # harmless: it already ran
        future = loop.create_future()
        future.add_done_callback(ImmediateCall(lambda f: seen.append(f"done: {f.result()}")))
        future.set_result(1)
        assert seen == ["immediate", "done: 1"]  # a future's done callback too, at once
        await trio.sleep(0.01)
    assert seen == ["immediate", "done: 1", "immediate, queued", "plain"]  # the loop ran the rest in order


async def test_synchronize_waits_for_what_is_queued_and_only_then() -> None:
    # trio-asyncio's reader task awaits loop.synchronize() after every read: with nothing
    # queued it must not cost a round through the loop's queue; with something queued it
    # still waits until that has run.
    seen: list[str] = []
    async with trio_asyncio.open_loop() as loop:
        run_immediate_callbacks(loop)
        queued: list[asyncio.Handle] = []
        put = loop._queue_handle  # type: ignore[attr-defined]
        loop._queue_handle = lambda h: queued.append(h) or put(h)  # type: ignore[attr-defined]
        await trio.lowlevel.checkpoint()  # the loop's task is waiting for callbacks
        with trio.fail_after(5):
            await loop.synchronize()  # type: ignore[attr-defined]
            assert queued == []
            loop.call_soon(seen.append, "plain")
            await loop.synchronize()  # type: ignore[attr-defined]
        assert seen == ["plain"]


async def test_asyncpgs_done_callback_on_a_query_runs_at_once_unless_the_query_was_cancelled() -> None:
    # It only acts on a cancelled query (it asks the server to cancel the statement);
    # for one that was not, running it at once saves a round through the loop's queue.
    calls: list[str] = []

    class Protocol:
        def _on_waiter_completed(self, future: asyncio.Future[Any]) -> None:
            calls.append("cancelled" if future.cancelled() else "done")

    async with trio_asyncio.open_loop() as loop:
        run_immediate_callbacks(loop)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(jobbuf._aio, "_QUERY_DONE", Protocol._on_waiter_completed)
            answered, cancelled = loop.create_future(), loop.create_future()
            for future in (answered, cancelled):
                future.add_done_callback(Protocol()._on_waiter_completed)
            answered.set_result(None)
            cancelled.cancel()
            assert calls == ["done"]  # at once; the cancelled one is queued
            await trio.sleep(0.01)
        assert calls == ["done", "cancelled"]


async def test_an_immediate_callback_that_raises_goes_to_the_loops_exception_handler() -> None:
    # Run inside asyncpg's protocol code, an exception would break the connection (it
    # would take it for a protocol error): it must never reach whoever scheduled it.
    handled: list[BaseException] = []

    def boom() -> None:
        raise RuntimeError("boom")

    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(lambda _loop, context: handled.append(context["exception"]))
        run_immediate_callbacks(loop)
        loop.call_soon(ImmediateCall(boom))  # does not raise here
        assert [str(e) for e in handled] == ["boom"]
        future = loop.create_future()
        loop.call_soon(future.set_result, 7)
        assert await trio_asyncio.aio_as_trio(lambda: future)() == 7  # the loop goes on


async def test_returns_what_the_coroutine_returns_and_raises_what_it_raises(loop: asyncio.AbstractEventLoop) -> None:
    async def answer(after: float) -> int:
        future = loop.create_future()
        loop.call_later(after, future.set_result, 42)
        await asyncio.sleep(0)  # a bare yield too
        return await future

    async def fails() -> None:
        future = loop.create_future()
        loop.call_soon(future.set_exception, KeyError("nope"))
        await future

    with trio.fail_after(5):
        assert await run_aio(answer(0.01)) == 42
        with pytest.raises(KeyError, match="nope"):
            await run_aio(fails())


async def test_a_trio_cancellation_cancels_the_awaited_future_once_and_lets_cleanup_finish(
    loop: asyncio.AbstractEventLoop,
) -> None:
    seen: list[str] = []

    async def query() -> None:
        try:
            await loop.create_future()  # never resolved: only a cancellation ends it
        except asyncio.CancelledError:
            seen.append("cancelled")
            cleanup = loop.create_future()
            loop.call_later(0.05, cleanup.set_result, None)
            await cleanup  # not cancelled again, although the trio scope still is
            seen.append("cleaned up")
            raise

    with trio.fail_after(5):
        with trio.move_on_after(0.05) as scope:
            await run_aio(query())
        assert scope.cancelled_caught  # the CancelledError came out as trio's Cancelled
    assert seen == ["cancelled", "cleaned up"]


async def test_an_asyncio_cancellation_that_is_not_ours_passes_through(loop: asyncio.AbstractEventLoop) -> None:
    async def cancelled_elsewhere() -> None:
        future = loop.create_future()
        loop.call_soon(future.cancel)
        await future

    with trio.fail_after(5), pytest.raises(asyncio.CancelledError):
        await run_aio(cancelled_elsewhere())


async def test_a_cancellation_that_finds_the_future_already_done_still_cancels_the_coroutine(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # Regression: a trio cancellation that arrived after the awaited future was done (its
    # callback not yet run) was used up without cancelling anything, and the coroutine's
    # next await (a second query, say, to a server that no longer answers) hung for good.
    # asyncio's Task throws CancelledError in at the next step instead; so does run_aio.
    first = loop.create_future()
    seen: list[str] = []

    async def two_queries() -> None:
        try:
            await first
            # Never answered. With the bug no trio cancellation could end this wait, so
            # the loop fails it after 2 s: the test then fails instead of hanging.
            never = loop.create_future()
            loop.call_later(2, never.set_exception, TimeoutError("not cancelled"))
            await never
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def answer_then_cancel(scope: trio.CancelScope) -> None:
        await trio.sleep(0.01)
        first.set_result(None)  # done; its callback only scheduled on the loop
        scope.cancel()  # in the same scheduling batch

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(answer_then_cancel, scope)
                await run_aio(two_queries())
    assert scope.cancelled_caught and seen == ["cancelled"]


async def test_a_coroutine_yielding_something_else_gets_an_error_thrown_in(loop: asyncio.AbstractEventLoop) -> None:
    thrown: list[BaseException] = []

    class Odd:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield "not a future"

    async def odd() -> None:
        try:
            await Odd()
        except RuntimeError as exc:
            thrown.append(exc)
            raise

    with trio.fail_after(5), pytest.raises(RuntimeError, match="not an asyncio future"):
        await run_aio(odd())
    assert len(thrown) == 1  # raised inside the coroutine, where the odd value was yielded
