"""AckBatcher (group commit) on its own, with a scripted sink."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

from jobbuf import Ack, Job
from jobbuf._acks import AckBatcher
from jobbuf._job import Claim
from jobbuf._source import AckOutcome


class SlowSink:
    def __init__(self) -> None:
        self.batches: list[int] = []

    async def ack(self, acks: Sequence[Ack], *, default_max_attempts: int) -> list[AckOutcome]:
        self.batches.append(len(acks))
        await trio.sleep(1)
        return ["done"] * len(acks)


def _ack(i: int) -> Ack:
    return Ack(Job(id=i, queue="default", payload=None, claim=Claim("o", 1)))


async def test_a_raising_callback_never_strands_other_callers(autojump_clock: trio.testing.MockClock) -> None:
    # Regression: a callback that raised skipped the flush's wake-ups, so callers whose
    # acks were in the same flush waited forever.
    batcher = AckBatcher(SlowSink(), 20, deadline=10)

    def explode(ack: Ack, outcome: AckOutcome | None, error: BaseException | None) -> None:
        raise RuntimeError("callback bug")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batcher.pump)
            batcher.submit_nowait(_ack(1), explode)
            assert await batcher.submit(_ack(2)) == "done"
            await batcher.drain()
            nursery.cancel_scope.cancel()


async def test_concurrent_acks_share_flushes(autojump_clock: trio.testing.MockClock) -> None:
    sink = SlowSink()
    batcher = AckBatcher(sink, 20, deadline=10)
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(batcher.submit, _ack(i))
    assert sum(sink.batches) == 10 and len(sink.batches) <= 2  # the first alone, the rest together


async def test_a_caller_cancelled_before_its_flush_withdraws_its_ack(autojump_clock: trio.testing.MockClock) -> None:
    sink = SlowSink()
    batcher = AckBatcher(sink, 20, deadline=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.submit, _ack(1))  # leads a 1 s flush
        await trio.sleep(0.1)
        with trio.move_on_after(0.1):
            await batcher.submit(_ack(2))  # queued behind it, then cancelled
    await batcher.drain()
    assert sink.batches == [1]  # the withdrawn ack was never sent
