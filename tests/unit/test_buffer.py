"""JobBuffer on MemoryJobSource, in virtual time (autojump clock)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from fractions import Fraction
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from jobbuf import (
    Ack,
    AckOutcome,
    BufferAlreadyRunningError,
    BufferClosedError,
    BufferConfig,
    ClaimResult,
    ConfigError,
    DatabaseUnavailableError,
    Job,
    JobBuffer,
    LeaseLostError,
    MemoryJobSource,
    _poller,
    open_job_buffer,
    open_postgres_source,
    rates,
    run_workers,
)
from jobbuf._workers import BURST


async def _states(source: MemoryJobSource) -> dict[int, tuple[str, int]]:
    return {s.id: (s.status, s.attempts) for s in await source.job_states()}


async def test_claims_in_batches_up_to_capacity(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    await source.enqueue_many("default", list(range(100)))
    async with open_job_buffer(source, "w", BufferConfig(capacity=10, low_water=3, batch_size=4)) as buf:
        await trio.sleep(1)
        assert 3 <= buf.depth <= 10
        stats = buf.stats()
        assert stats.claimed == buf.depth and stats.polls == stats.claimed // 4 + (stats.claimed % 4 > 0)


async def test_take_below_low_water_triggers_refill(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    await source.enqueue_many("default", list(range(50)))
    cfg = BufferConfig(capacity=10, low_water=5, poll_interval=1000)
    async with open_job_buffer(source, "w", cfg) as buf:
        await trio.sleep(0.1)
        assert buf.depth == 10
        for _ in range(5):
            await buf.take_job()
        await trio.sleep(0.1)
        assert buf.depth == 5  # at the mark: no claim yet
        await buf.take_job()
        await trio.sleep(0.1)
        assert buf.depth == 10  # crossed it: refilled without waiting for the poll


async def test_idle_buffer_repolls_every_poll_interval(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=10)) as buf:
        await trio.sleep(100)
        assert 9 <= buf.stats().empty_polls <= 13


async def test_takes_on_an_empty_buffer_do_not_poll(autojump_clock: trio.testing.MockClock) -> None:
    # Workers waiting on an idle queue cost nothing: only a NOTIFY or poll_interval claims.
    source = MemoryJobSource()
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=1000)) as buf:
        await trio.sleep(1)
        polls = buf.stats().polls
        for _ in range(20):
            assert await buf.take_job(0.5) is None
        assert buf.stats().polls == polls


async def test_a_trickle_of_jobs_costs_one_claim_each(autojump_clock: trio.testing.MockClock) -> None:
    # Taking a job from a buffer already below low_water does not claim again: the claim
    # that brought it came back short, so nothing else is ready until the next NOTIFY.
    source = MemoryJobSource()
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=1000)) as buf:
        await trio.sleep(1)
        polls = buf.stats().polls
        for n in range(10):
            await source.enqueue("default", n)
            job = await buf.take_job(5)
            assert job is not None and job.payload == n
            await buf.complete(job)
            await trio.sleep(1)
        assert buf.stats().polls == polls + 10


async def test_a_retry_falls_due_and_is_claimed_without_a_take_or_poll(autojump_clock: trio.testing.MockClock) -> None:
    # Nothing announces a retry: the buffer that failed the job claims it when it is due.
    source = MemoryJobSource()
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=60)) as buf:
        await trio.sleep(1)
        await source.enqueue("default", "x")
        job = await buf.take_job(5)
        assert job is not None
        await buf.fail(job, "boom", retry_in=0)
        start = trio.current_time()
        again = await buf.take_job(30)
        assert again is not None and again.id == job.id and trio.current_time() - start < 0.1
        await buf.fail(again, "boom", retry_in=3)
        start = trio.current_time()
        third = await buf.take_job(30)
        assert third is not None and third.id == job.id and 3 <= trio.current_time() - start < 3.1


async def test_released_jobs_are_claimed_again_at_once(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    async with open_job_buffer(source, "a", BufferConfig(poll_interval=60)) as a:
        await trio.sleep(1)
        await source.enqueue("default", "x")
        job = await a.take_job(5)
        assert job is not None and await a.release(job)
        again = await a.take_job(1)  # by this buffer, released by itself
        assert again is not None and again.id == job.id
        async with open_job_buffer(source, "b", BufferConfig(poll_interval=60)) as b:
            await trio.sleep(1)
            assert b.depth == 0
            await a.release(again)
            await a.stop()
            taken = await b.take_job(1)  # by another buffer: the release woke it
            assert taken is not None and taken.id == job.id


async def test_a_retry_wake_up_is_never_early(autojump_clock: trio.testing.MockClock) -> None:
    # The source rounds run_at to its clock: a claim at exactly "now + delay" can find the
    # job a microsecond short of due, and then it would wait for the next poll.
    rng = random.Random(1)
    source = MemoryJobSource()
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=60, max_attempts=1000)) as buf:
        await trio.sleep(1.0000006)
        await source.enqueue("default", "x")
        job = await buf.take_job(5)
        for delay in [2.0000006] + [rng.uniform(0.5, 1.0) for _ in range(40)]:
            assert job is not None
            await buf.fail(job, "boom", retry_in=delay)
            start = trio.current_time()
            job = await buf.take_job(100)
            assert trio.current_time() - start < delay + 0.1


async def test_a_wake_up_at_the_ttl_timer_is_not_lost(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=1000, ttl=1)) as buf:
        for k in range(2, 42):
            await trio.sleep_until(k)  # the poller's TTL timer fires at k too
            polls = buf.stats().polls
            buf.wake()  # as a NOTIFY read in the same scheduling batch would
            await trio.sleep(0.5)
            assert buf.stats().polls > polls, k


async def test_backing_off_with_stale_entries_does_not_spin(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    sleep = _poller._Poller._sleep

    async def counting(self: Any, wake: trio.Event) -> bool:
        sleeps.append(trio.current_time())
        return await sleep(self, wake)

    monkeypatch.setattr(_poller._Poller, "_sleep", counting)
    source = MemoryJobSource()
    await source.enqueue_many("default", list(range(5)))
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=1000, ttl=20)) as buf:
        await trio.sleep(0.5)
        assert buf.depth == 5
        source.fail_next("claim", DatabaseUnavailableError("down"), times=100_000)
        buf.wake()
        await trio.sleep(40)  # the entries go stale at 20.5, during a backoff
        assert buf.depth == 0 and buf.stats().discarded == 5
    assert len([t for t in sleeps if 19 <= t <= 30]) < 50


async def test_a_release_wakes_its_own_buffer_without_the_sources_wake_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Unheard(MemoryJobSource):  # as a PostgreSQL source whose listener is reconnecting
        def _notify_released(self, rows: Sequence[Any]) -> None:
            pass

    source = Unheard()
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=60)) as buf:
        await trio.sleep(1)
        await source.enqueue("default", "x")
        job = await buf.take_job(5)
        assert job is not None and await buf.release(job)
        again = await buf.take_job(1)
        assert again is not None and again.id == job.id


class _SlowClaimReply(MemoryJobSource):
    """A claim whose reply takes 0.5 s, its rows chosen at once (as PostgreSQL's are)."""

    async def claim(self, **kwargs: Any) -> ClaimResult:
        result = await super().claim(**kwargs)
        await trio.sleep(0.5)
        return result


@pytest.mark.parametrize(
    "cfg",
    [BufferConfig(poll_interval=60), BufferConfig(poll_interval=60, batch_size=2)],
    ids=["inline", "pipelined"],
)
async def test_an_enqueue_during_a_claim_is_not_missed(
    cfg: BufferConfig, autojump_clock: trio.testing.MockClock
) -> None:
    source = _SlowClaimReply()
    async with open_job_buffer(source, "w", cfg) as buf:
        await trio.sleep(1)
        await source.enqueue("default", 1)
        await trio.sleep(0.1)  # the claim of job 1 is in flight
        await source.enqueue("default", 2)  # and its wake-up arrives now
        start = trio.current_time()
        got = [await buf.take_job(30) for _ in range(2)]
        assert [j.payload for j in got if j is not None] == [1, 2] and trio.current_time() - start < 2


async def test_an_enqueue_while_the_pipeline_is_full_is_not_missed(autojump_clock: trio.testing.MockClock) -> None:
    source = _SlowClaimReply()
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=60, low_water=4, batch_size=2)) as buf:
        await trio.sleep(1)
        await source.enqueue_many("default", [1, 2])  # a full claim, so a second follows it at once
        await trio.sleep(0.6)
        await source.enqueue("default", 3)  # while the second (chosen before) is in flight
        start = trio.current_time()
        got = [await buf.take_job(30) for _ in range(3)]
        assert [j.payload for j in got if j is not None] == [1, 2, 3] and trio.current_time() - start < 2


async def test_take_job_timeout_returns_none(autojump_clock: trio.testing.MockClock) -> None:
    async with open_job_buffer(MemoryJobSource(), "w") as buf:
        start = trio.current_time()
        assert await buf.take_job(5) is None
        assert trio.current_time() - start == pytest.approx(5)


async def test_stale_entry_is_discarded_at_take_and_released(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    cfg = BufferConfig(ttl=10, poll_interval=1000)
    async with open_job_buffer(source, "w", cfg) as buf:
        await trio.sleep(1)
        stale = Job(id=999, queue="default", payload=None)  # hand-built: no claim
        assert buf.offer_jobs([stale]) == 1
        buf._entries[0] = (stale, trio.current_time() - 11)  # entered 11 s ago
        assert await buf.take_job(0) is None
        assert buf.stats().discarded == 1


async def test_ttl_sweep_releases_claimed_job_with_attempt_given_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = MemoryJobSource()
    (job_id,) = await source.enqueue_many("default", [1])
    cfg = BufferConfig(ttl=10, poll_interval=1000, capacity=1, low_water=1)
    async with open_job_buffer(source, "w", cfg) as buf:
        await trio.sleep(5)
        assert (await _states(source))[job_id] == ("claimed", 1)
        await trio.sleep(5.5)
        assert buf.stats().discarded == 1 and buf.stats().released == 1
        stopped = await buf.stop()
    assert stopped == [] or [j.id for j in stopped] == [job_id]
    assert (await _states(source))[job_id] == ("pending", 0)


async def test_claim_errors_are_counted_and_retried(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    await source.enqueue("default", 1)
    source.fail_next("claim", DatabaseUnavailableError("down"), times=3)
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=1000)) as buf:
        job = await buf.take_job(30)
        assert job is not None
        stats = buf.stats()
        assert stats.poll_errors == 3 and "down" in (stats.last_error or "")


class SlowClaimSource(MemoryJobSource):
    """Each claim takes its rows at once and answers after the next delay from ``delays``
    (none once they run out); counts the claims in flight."""

    def __init__(self, delays: list[float]) -> None:
        super().__init__()
        self.delays = delays
        self.in_flight = self.most_in_flight = 0

    async def claim(self, **kwargs: Any) -> ClaimResult:
        delay = self.delays.pop(0) if self.delays else 0.0
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            result = await super().claim(**kwargs)  # takes its rows now, answers after the delay
            await trio.sleep(delay)
            return result
        finally:
            self.in_flight -= 1


async def test_small_batches_pipeline_claims(autojump_clock: trio.testing.MockClock) -> None:
    # batch_size 25 under low_water 100: the first claim probes alone; once it came back
    # full, the other three run at once, each handing out its rows in claim order.
    source = SlowClaimSource(delays=[1, 3, 2, 1])
    ids = await source.enqueue_many("default", list(range(100)))
    config = BufferConfig(capacity=100, low_water=100, batch_size=25, poll_interval=1000)
    async with open_job_buffer(source, "w", config) as buf:
        await trio.sleep(5)
        assert source.most_in_flight == 3 and buf.depth == 100 and buf.stats().polls == 4
        taken = [job.id for job in [await buf.take_job() for _ in range(100)] if job is not None]
    assert sorted(taken) == ids
    runs = [taken[i : i + 25] for i in range(0, 100, 25)]
    assert all(run == sorted(run) for run in runs)


async def test_an_idle_pipelined_buffer_polls_one_claim_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    source = SlowClaimSource(delays=[])
    config = BufferConfig(capacity=100, low_water=100, batch_size=25, poll_interval=10)
    async with open_job_buffer(source, "w", config) as buf:
        await trio.sleep(100)
        assert source.most_in_flight == 1 and buf.stats().empty_polls <= 13


async def test_a_claim_overflowing_an_offer_goes_back_even_if_its_release_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Offers win: a claim that lands on a buffer filled meanwhile releases what no longer
    # fits. If that release fails, the rows stay ours and the next round releases them.
    source = SlowClaimSource(delays=[1])
    ids = await source.enqueue_many("default", list(range(10)))
    source.fail_next("release", DatabaseUnavailableError("down"))
    async with open_job_buffer(source, "w", BufferConfig(capacity=10, low_water=10, poll_interval=1000)) as buf:
        await trio.sleep(0.5)  # the claim of 10 is in flight
        assert buf.offer_jobs([Job(id=-i, queue="default", payload=None) for i in range(1, 7)]) == 6
        await trio.sleep(0.501)  # it landed at t = 1: 4 fit, 6 overflow, their release failed
        stats = buf.stats()
        assert buf.depth == 10 and stats.claimed == 10 and stats.released == 0 and stats.poll_errors == 1
        await trio.sleep(1)  # the retry released them
        assert buf.stats().released == 6
        states = {s.id: s.status for s in await source.job_states()}
        assert sorted(i for i in ids if states[i] == "pending") == ids[4:]


@pytest.mark.parametrize("batch_size", [None, 5], ids=["one-claim", "pipelined"])
async def test_claims_in_flight_at_exit_land_and_are_released(
    autojump_clock: trio.testing.MockClock, batch_size: int | None
) -> None:
    # The exit does not race claims still in flight: they are shielded, land, and the
    # release by owner then gives every row back.
    source = SlowClaimSource(delays=[0, 2, 2, 2])
    await source.enqueue_many("default", list(range(40)))
    config = BufferConfig(capacity=20, low_water=20, batch_size=batch_size)
    with trio.move_on_after(1.5) as scope:  # leaves the context while claims are in flight
        async with open_job_buffer(source, "w", config) as buf:
            await buf.take_job()  # the first claim landed; the next ones are on their way
            await trio.sleep_forever()
    assert scope.cancelled_caught and trio.current_time() >= 2  # the exit waited for them
    assert {(s.status, s.attempts) for s in await source.job_states()} == {("pending", 0)}
    assert source.in_flight == 0


async def test_default_batch_size_claims_one_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    source = SlowClaimSource(delays=[1] * 10)
    await source.enqueue_many("default", list(range(300)))
    async with open_job_buffer(source, "w", BufferConfig(capacity=100, low_water=100)) as buf:
        for _ in range(300):
            assert await buf.take_job() is not None
    assert source.most_in_flight == 1


async def test_entries_offered_to_an_idle_buffer_are_swept_on_time(autojump_clock: trio.testing.MockClock) -> None:
    # Regression: the poller of an empty buffer slept a whole poll_interval, so entries that
    # arrived meanwhile (an offer, a claim that landed later) outlived their TTL.
    source = MemoryJobSource()
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=1000, ttl=1)) as buf:
        await trio.sleep(5)  # idle: the poller is asleep
        buf.offer_jobs([Job(id=-i, queue="default", payload=None) for i in range(1, 4)])
        await trio.sleep(2.1)
        assert buf.stats().discarded == 3 and buf.depth == 0


async def test_a_claim_past_shutdown_timeout_is_a_poll_error(autojump_clock: trio.testing.MockClock) -> None:
    # Regression: the claim's shielded deadline swallowed the cancellation and the poller
    # then failed on an unbound result (UnboundLocalError in stats).
    source = SlowClaimSource(delays=[100])
    async with open_job_buffer(source, "w", BufferConfig(shutdown_timeout=1)) as buf:
        await trio.sleep(1.5)
        stats = buf.stats()
        assert stats.poll_errors == 1 and "TimeoutError: claim not answered" in (stats.last_error or "")


async def test_an_idle_buffers_ttl_timer_sweeps_without_polling(autojump_clock: trio.testing.MockClock) -> None:
    # The poller of an empty buffer wakes every min(ttl, 0.8 x lease) to sweep entries that
    # may have arrived meanwhile, but those wake-ups never claim: polls follow poll_interval.
    source = MemoryJobSource()
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=1000, ttl=1)) as buf:
        await trio.sleep(100)
        assert buf.stats().polls == 1


async def test_a_failed_pipelined_claim_is_retried_after_its_backoff(autojump_clock: trio.testing.MockClock) -> None:
    # A pipelined claim fails in its own task while the poller sleeps: the failure must
    # wake it, or the retry would wait for the next poll_interval.
    source = MemoryJobSource()
    await source.enqueue("default", 1)
    source.fail_next("claim", DatabaseUnavailableError("down"))
    config = BufferConfig(capacity=100, low_water=100, batch_size=25, poll_interval=1000)
    async with open_job_buffer(source, "w", config) as buf:
        await trio.sleep(2)  # no taker, whose empty pops would wake the poller too
        assert buf.depth == 1 and buf.stats().poll_errors == 1


async def test_stop_then_take_raises_closed(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    async with open_job_buffer(source, "w") as buf:
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                with pytest.raises(BufferClosedError):
                    await buf.take_job()

            nursery.start_soon(waiter)
            await trio.sleep(1)
            assert await buf.stop() == []
        with pytest.raises(BufferClosedError):
            await buf.take_job(1)
        with pytest.raises(BufferClosedError):
            buf.offer_jobs([])


async def test_acks_and_releases_after_the_exit_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    await source.enqueue_many("default", [1, 2])
    async with open_job_buffer(source, "w") as buf:
        first, second = await buf.take_job(), await buf.take_job()
        assert first is not None and second is not None
    with pytest.raises(BufferClosedError, match=f"release of job {first.id} refused"):
        await buf.release(first)  # a release went through to the source before
    with pytest.raises(BufferClosedError, match=f"ack of job {second.id} refused"):
        await buf.complete(second)
    assert {(s.status, s.attempts) for s in await source.job_states()} == {("pending", 0)}  # the exit released both


async def test_offer_jobs_while_the_buffer_starts_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    # A start that then failed would have stranded them: no exit releases them.
    class SlowStart(MemoryJobSource):
        async def heartbeat(self, *args: Any, **kwargs: Any) -> None:  # the first touch of the source
            await trio.sleep(1)
            raise DatabaseUnavailableError("down")

    buf = JobBuffer(SlowStart(), "w")
    refused: list[BaseException] = []

    async def offer_meanwhile() -> None:
        await trio.sleep(0.5)
        try:
            buf.offer_jobs([Job(id=1, queue="default", payload=None)])
        except BufferClosedError as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(offer_meanwhile)
        with pytest.raises(DatabaseUnavailableError):
            await nursery.start(buf.run)
    assert len(refused) == 1 and buf.depth == 0


async def test_stop_before_start_returns_empty_and_second_run_raises() -> None:
    buf = JobBuffer(MemoryJobSource(), "w")
    with pytest.raises(BufferClosedError, match="has not started"):  # it could not give them back
        buf.offer_jobs([Job(id=1, queue="default", payload=None)])
    assert await buf.stop() == []
    with trio.fail_after(5):
        async with open_job_buffer(MemoryJobSource(), "w") as running:
            with pytest.raises(BufferAlreadyRunningError):
                await running.run()


async def test_offer_jobs_takes_up_to_free_capacity(autojump_clock: trio.testing.MockClock) -> None:
    cfg = BufferConfig(capacity=3, low_water=1, poll_interval=1000)
    async with open_job_buffer(MemoryJobSource(), "w", cfg) as buf:
        jobs = [Job(id=i, queue="default", payload=i) for i in range(5)]
        assert buf.offer_jobs(jobs) == 3
        assert buf.depth == 3 and buf.stats().offered == 3
        assert [(await buf.take_job(0)).id for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
        await buf.complete(jobs[0])  # no claim: counted only
        assert buf.stats().completed == 1


async def test_cancelled_take_leaves_the_job_buffered(autojump_clock: trio.testing.MockClock) -> None:
    cfg = BufferConfig(capacity=200, low_water=1, poll_interval=1000)
    async with open_job_buffer(MemoryJobSource(), "w", cfg) as buf:
        got: list[int] = []
        for i in range(200):
            async with trio.open_nursery() as nursery:

                async def take() -> None:
                    job = await buf.take_job()
                    got.append(job.id)  # type: ignore[union-attr]

                nursery.start_soon(take)
                await trio.sleep(0.001 * (i % 3))
                assert buf.offer_jobs([Job(id=i, queue="default", payload=i)]) == 1
                await trio.sleep(0.001 * (i % 2))
                nursery.cancel_scope.cancel()
        leftover = [job.id for job, _ in buf._entries]
        assert sorted(got + leftover) == list(range(200))  # every job taken exactly once or still buffered


async def test_run_workers_completes_and_fails(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    ids = await source.enqueue_many("default", list(range(20)), max_attempts=1)

    async def handler(job: Job) -> None:
        await trio.sleep(0.5)
        if job.payload % 5 == 0:
            raise ValueError(f"bad {job.payload}")

    async with open_job_buffer(source, "w") as buf:
        with trio.move_on_after(30):
            await run_workers(buf, handler, concurrency=4)
        stats = buf.stats()
    assert (stats.completed, stats.failed, stats.dead) == (16, 4, 4)
    dead = [s for s in await source.job_states() if s.status == "dead"]
    assert sorted(s.id for s in dead) == [ids[i] for i in (0, 5, 10, 15)]
    assert all("ValueError: bad" in (s.last_error or "") for s in dead)


async def test_run_workers_cancellation_releases_running_jobs(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    await source.enqueue_many("default", list(range(10)))

    async def forever(job: Job) -> None:
        await trio.sleep_forever()

    async with open_job_buffer(source, "w") as buf:
        with trio.move_on_after(5):
            await run_workers(buf, forever, concurrency=3)
        assert buf.stats().released == 3
    assert all(s.status == "pending" and s.attempts == 0 for s in await source.job_states())


async def test_run_workers_yields_to_other_tasks_between_bursts(autojump_clock: trio.testing.MockClock) -> None:
    # A worker runs buffered jobs back to back without a scheduling point, but only for
    # BURST seconds: a handler that never awaits must not starve the rest of the program.
    source = MemoryJobSource()
    await source.enqueue_many("default", list(range(200)))
    done = 0

    async def busy(job: Job) -> None:  # CPU work, never awaits
        nonlocal done
        until = time.perf_counter() + 0.0002
        while time.perf_counter() < until:
            pass
        done += 1

    others = 0
    async with open_job_buffer(source, "w", BufferConfig(capacity=200, low_water=1)) as buf:
        await trio.sleep(0.1)  # filled
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_workers, buf, busy, concurrency=1))
            while done < 200:
                others += 1
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    # 200 jobs of 0.2 ms in bursts of 0.5 ms: about 80 turns for the other task.
    assert others >= 20


async def test_a_handler_that_blocks_past_the_burst_ends_it_at_once(autojump_clock: trio.testing.MockClock) -> None:
    # BURST counts from the worker's scheduling point: a handler that runs longer than
    # BURST without awaiting is the only job that worker runs before it yields.
    source = MemoryJobSource()
    await source.enqueue_many("default", list(range(6)))
    runs: list[int] = []  # handler runs per step of the worker's task
    worker_tasks: set[trio.lowlevel.Task] = set()

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task in worker_tasks:
                runs.append(0)

    async def blocking(job: Job) -> None:
        worker_tasks.add(trio.lowlevel.current_task())
        time.sleep(2 * BURST)  # noqa: ASYNC251 - the point: never awaits, and runs longer than a burst
        runs[-1] += 1

    async with open_job_buffer(source, "w", BufferConfig(capacity=10, low_water=1)) as buf:
        await trio.sleep(0.1)  # filled
        runs.append(0)  # the step that runs the first handler began before we knew the task
        trio.lowlevel.add_instrument(Steps())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_workers, buf, blocking, concurrency=1))
            while sum(runs) < 6:
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    assert max(runs) == 1, runs


async def test_run_workers_cancelled_mid_burst_strands_nothing(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    ids = await source.enqueue_many("default", list(range(300)))
    completed: list[int] = []

    async def handler(job: Job) -> None:
        await trio.sleep(0.001 * (job.payload % 3))  # some jobs reach a checkpoint, some do not
        completed.append(job.id)

    async with open_job_buffer(source, "w", BufferConfig(capacity=100, low_water=50)) as buf:
        with trio.move_on_after(0.05):
            await run_workers(buf, handler, concurrency=5)
    states = {s.id: s for s in await source.job_states()}
    assert completed and len(completed) < len(ids)
    assert all(i not in states for i in completed)  # completed rows are deleted
    assert all(states[i].status == "pending" and states[i].attempts == 0 for i in set(ids) - set(completed))


async def test_job_timeout_fails_the_job(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    (job_id,) = await source.enqueue_many("default", [1])

    async def slow(job: Job) -> None:
        await trio.sleep(100)

    async with open_job_buffer(source, "w") as buf:
        with trio.move_on_after(20):
            await run_workers(buf, slow, concurrency=1, job_timeout=10)
    (state,) = await source.job_states([job_id])
    assert state.status == "pending" and "timed out after 10s" in (state.last_error or "")


class SlowAckSource(MemoryJobSource):
    async def ack(self, acks: Sequence[Ack], *, default_max_attempts: int) -> list[AckOutcome]:
        await trio.sleep(1)
        return await super().ack(acks, default_max_attempts=default_max_attempts)


async def test_an_ack_or_release_cancelled_before_it_was_sent_keeps_the_job(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: complete() cancelled while its ack waited behind another flush (so it
    # was withdrawn, nothing applied), or release() cancelled mid-call, dropped the job
    # from the buffer's books: no lease extension, so the same live buffer later rescued
    # it as if its holder had crashed (here, with max_attempts=1, it went dead).
    class SlowSource(SlowAckSource):
        async def release(self, jobs: Sequence[Job]) -> list[int]:
            await trio.sleep(1)
            return await super().release(jobs)

    source = SlowSource()
    await source.enqueue_many("default", [1, 2, 3], max_attempts=1)
    async with open_job_buffer(source, "w", BufferConfig(lease=3, poll_interval=0.5)) as buf:
        a, b, c = [await buf.take_job() for _ in range(3)]
        assert a and b and c
        async with trio.open_nursery() as nursery:
            nursery.start_soon(buf.complete, a)  # leads a flush of 1 s
            await trio.sleep(0.1)
            with trio.move_on_after(0.2):  # b's ack waits its turn, then is withdrawn
                await buf.complete(b)
        with trio.move_on_after(0.5):
            await buf.release(c)
        assert buf.stats().in_flight == 2  # b and c: still ours
        await trio.sleep(10)  # the buffer lives on, extending their leases
        assert await _states(source) == {b.id: ("claimed", 1), c.id: ("claimed", 1)}
        await buf.complete(b)  # b can still be acked
    assert await _states(source) == {c.id: ("pending", 0)}  # and c went back at the exit


async def test_rows_of_a_claim_whose_reply_was_lost_go_back_at_once(autojump_clock: trio.testing.MockClock) -> None:
    # Regression: a claim that committed but failed on the way back (a lost reply, its
    # deadline) left its rows claimed by the live buffer, unseen, until their lease lapsed
    # and a claim rescued them, burning an attempt (here the only one: the job went dead).
    source = MemoryJobSource()
    await source.enqueue_many("default", ["x"], max_attempts=1)
    source.fail_next("claim", DatabaseUnavailableError("reply lost"), after=True)
    async with open_job_buffer(source, "w", BufferConfig(lease=3)) as buf:
        job = await buf.take_job(timeout=2)  # well before the lease
        assert job is not None and job.attempts == 1
        assert buf.stats().poll_errors == 1 and buf.stats().released == 1
        await buf.complete(job)
    assert await _states(source) == {}


async def test_unseen_rows_are_released_only_once_a_claim_works_again(autojump_clock: trio.testing.MockClock) -> None:
    # During an outage the release would only retry (for retry_timeout, in the PostgreSQL
    # source) and keep the poller from its backoff sleep, so stop() waited for it.
    class Counting(MemoryJobSource):
        releases = 0

        async def release_owner(self, owner: str, keep: Collection[int] = ()) -> list[int]:
            self.releases += 1
            return await super().release_owner(owner, keep)

    source = Counting()
    await source.enqueue_many("default", ["x"])
    source.fail_next("claim", DatabaseUnavailableError("down"), times=20)
    async with open_job_buffer(source, "w") as buf:
        await trio.sleep(5)
        assert buf.stats().poll_errors > 5 and source.releases == 0
        with trio.fail_after(0.01):
            assert await buf.stop() == []  # at once: the poller was backing off
    source = Counting()
    await source.enqueue_many("default", ["x"])
    source.fail_next("claim", DatabaseUnavailableError("down"), times=3)
    async with open_job_buffer(source, "w") as buf:
        assert await buf.take_job(timeout=30) is not None
        assert source.releases == 1


async def test_only_rows_the_buffer_does_not_know_of_are_released_after_a_failed_claim(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = MemoryJobSource()
    all_ids = await source.enqueue_many("default", list(range(4)), max_attempts=1)
    async with open_job_buffer(source, "w", BufferConfig(capacity=2, low_water=1)) as buf:
        await trio.sleep(0.1)
        taken = await buf.take_job()  # in flight; one more buffered
        assert taken is not None and buf.depth == 1
        # A claim by this instance whose reply never came (as fail_next(after=True) makes):
        (unseen,) = (
            await source.claim(
                owner=buf.instance, worker_id="w", queues=("default",), limit=1, lease=30.0, default_max_attempts=1
            )
        ).jobs
        source.fail_next("claim", DatabaseUnavailableError("down"))
        buffered = await buf.take_job()  # below low water: the next claim fails
        await trio.sleep(0.01)
        assert buffered is not None and buf.stats().poll_errors == 1 and buf.stats().released == 0
        await trio.sleep(1)  # after the backoff a claim works again: then the unseen row is released
        assert buf.stats().released == 1 and len({taken.id, buffered.id, unseen.id}) == 3
        states = await _states(source)
        assert states[taken.id] == states[buffered.id] == ("claimed", 1)  # what the buffer holds stays
        assert states[unseen.id] in {("pending", 0), ("claimed", 1)}  # back, with no attempt burnt
        assert set(all_ids) == set(states)


async def test_a_run_workers_ack_that_failed_without_applying_gives_the_job_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: an ack flush that failed with an error other than "database unavailable"
    # (a server error: nothing applied) dropped the job from the books, so the live buffer
    # stopped extending its lease and later rescued it from itself (here: dead). Nobody
    # sends that ack again, so the job is released (attempt given back) and redelivered.
    source = MemoryJobSource()
    await source.enqueue_many("default", ["x"], max_attempts=1)
    source.fail_next("ack", RuntimeError("server error, nothing applied"))
    runs = 0

    async def handler(job: Job) -> None:
        nonlocal runs
        runs += 1

    cfg = BufferConfig(lease=3, poll_interval=0.5)
    async with open_job_buffer(source, "w", cfg) as buf, trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_workers, buf, handler))
        await trio.sleep(10)
        assert runs == 2 and buf.stats().completed == 1 and buf.stats().in_flight == 0
        assert buf.stats().released == 1 and await _states(source) == {}
        nursery.cancel_scope.cancel()


async def test_a_failed_release_of_unseen_rows_waits_for_the_database_to_answer_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The database answers (a heartbeat), then goes away as the release runs: the release
    # must not be tried again, round after round, before the database answers anew.
    class DropsAtRelease(MemoryJobSource):
        down = False
        releases = 0

        async def release_owner(self, owner: str, keep: Collection[int] = ()) -> list[int]:
            if self.releases == 0:  # the database goes away just then
                self.down = True
            self.releases += 1
            if self.down:
                raise DatabaseUnavailableError("gone again")
            return await super().release_owner(owner, keep)

        async def heartbeat(self, *args: Any, **kwargs: Any) -> None:
            if self.down:
                raise DatabaseUnavailableError("gone")
            await super().heartbeat(*args, **kwargs)

    source = DropsAtRelease()
    cfg = BufferConfig(capacity=10, low_water=5, poll_interval=0.5)
    async with open_job_buffer(source, "w", cfg) as buf:
        await trio.sleep(1)
        source.fail_next("claim", DatabaseUnavailableError("reply lost"), after=True)
        await source.enqueue_many("default", ["a", "b"])
        await trio.sleep(0.01)
        assert buf.stats().poll_errors == 1  # the claim committed, its reply lost
        buf.offer_jobs([Job(id=-i, queue="default", payload=i) for i in range(1, 7)])  # no claims from now on
        await trio.sleep(10)
        assert source.releases == 1
        source.down = False  # back: a heartbeat answers, then the release is tried again
        await trio.sleep(3)
        assert source.releases == 2 and buf.stats().released == 2


async def test_an_ack_that_always_fails_gives_its_job_back_once_then_lets_its_lease_lapse(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: giving the job back every time looped at once, without end (claimed,
    # run, ack refused, released with the attempt given back, claimed...). The second
    # refusal leaves the job to its lease: rescued with the attempt counted, dead at last.
    class RefusesAcks(MemoryJobSource):
        async def ack(self, acks: Sequence[Ack], *, default_max_attempts: int) -> list[AckOutcome]:
            raise RuntimeError("refused by the server")

    source = RefusesAcks()
    (job_id,) = await source.enqueue_many("default", ["x"], max_attempts=3)
    runs = 0
    guard = trio.CancelScope()  # a loop never lets the mock clock move: stop it, so the test fails

    async def handler(job: Job) -> None:
        nonlocal runs
        runs += 1
        if runs > 20:
            guard.cancel()

    cfg = BufferConfig(lease=3, poll_interval=0.5)
    with guard:
        async with open_job_buffer(source, "w", cfg) as buf, trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_workers, buf, handler))
            await trio.sleep(1)
            assert runs == 2 and buf.stats().released == 1
            await trio.sleep(30)
            assert runs == 4 and await _states(source) == {job_id: ("dead", 3)}
            nursery.cancel_scope.cancel()
    assert runs <= 4 and not guard.cancelled_caught


async def test_an_error_text_the_database_cannot_store_is_escaped(autojump_clock: trio.testing.MockClock) -> None:
    # PostgreSQL's text refuses NUL (and lone surrogates): an ack carrying one was refused
    # every time, so the failure was never recorded.
    class LikePostgres(MemoryJobSource):
        async def ack(self, acks: Sequence[Ack], *, default_max_attempts: int) -> list[AckOutcome]:
            if any(a.error is not None and "\x00" in a.error for a in acks):
                raise RuntimeError("invalid byte sequence for encoding UTF8: 0x00")
            return await super().ack(acks, default_max_attempts=default_max_attempts)

    source = LikePostgres()
    (job_id,) = await source.enqueue_many("default", ["x"], max_attempts=1)
    async with open_job_buffer(source, "w") as buf:
        job = await buf.take_job()
        assert job is not None
        await buf.fail(job, ValueError("bad \x00 byte and \udc80"))
    (state,) = await source.job_states([job_id])
    assert state.status == "dead" and state.last_error == "ValueError: bad \\x00 byte and \\udc80"


async def test_an_error_text_is_cut_to_4000_characters_after_escaping(autojump_clock: trio.testing.MockClock) -> None:
    # Cut before escaping, 5,000 NULs became 16,000 characters (each one 4 once escaped).
    source = MemoryJobSource()
    (job_id,) = await source.enqueue_many("default", ["x"])
    async with open_job_buffer(source, "w") as buf:
        job = await buf.take_job()
        assert job is not None
        await buf.fail(job, "\x00" * 5000)
    (state,) = await source.job_states([job_id])
    assert state.last_error == "\\x00" * 1000


async def test_unseen_rows_are_released_when_no_claim_is_needed_once_the_database_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A buffer at low water (here filled by offers) makes no claim: the heartbeat tells
    # that the database answers again, and the rows of the failed claim go back.
    source = MemoryJobSource()
    cfg = BufferConfig(capacity=10, low_water=5, lease=3, poll_interval=0.5)
    async with open_job_buffer(source, "w", cfg) as buf:
        await trio.sleep(1)
        source.fail_next("claim", DatabaseUnavailableError("reply lost"), after=True)
        ids = await source.enqueue_many("default", ["a", "b"], max_attempts=1)  # the claim commits, then fails
        await trio.sleep(0.01)
        assert buf.depth == 0 and buf.stats().poll_errors == 1
        buf.offer_jobs([Job(id=-i, queue="default", payload=i) for i in range(1, 7)])  # depth 6 >= low water
        await trio.sleep(2)
        assert buf.stats().released == 2 and await _states(source) == {i: ("pending", 0) for i in ids}


async def test_complete_cancelled_inside_a_flush_is_still_counted(autojump_clock: trio.testing.MockClock) -> None:
    # Regression: a complete() cancelled while another caller's flush carried its ack was
    # applied in the database but never counted in stats.
    source = SlowAckSource()
    await source.enqueue_many("default", list(range(33)))
    async with open_job_buffer(source, "w") as buf:
        jobs = [await buf.take_job() for _ in range(33)]
        assert all(jobs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(buf.complete, jobs[0])  # leads a flush, t = 0..1
            await trio.sleep(0.1)
            for job in jobs[1:32]:  # queue behind it; the 32nd ack queued leads a second flush
                nursery.start_soon(buf.complete, job)
            with trio.move_on_after(0.5):
                await buf.complete(jobs[32])  # queued first: a follower in that flush, cancelled in it
            assert buf.stats().completed == 0
        assert buf.stats().completed == 33 and buf.stats().in_flight == 0
    assert await source.job_states() == []


async def test_complete_cancelled_just_as_its_flush_ends_is_counted_in_either_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The flush carrying c's ack (led by b) ends at the very moment c is cancelled, so
    # both are runnable in one scheduling batch, which trio runs in either order: c sees
    # its cancellation before the flush ended, or after (then submit reports the outcome
    # itself). A hundred rounds make each order all but certain; each must count the ack.
    class AppliesThenAnswers(MemoryJobSource):  # no scheduling point after the sleep
        async def ack(self, acks: Sequence[Ack], *, default_max_attempts: int) -> list[AckOutcome]:
            outcomes = await super().ack(acks, default_max_attempts=default_max_attempts)
            await trio.sleep(1)
            return outcomes

    for _ in range(100):
        source = AppliesThenAnswers()
        await source.enqueue_many("default", [1, 2, 3])
        async with open_job_buffer(source, "w") as buf:
            a, b, c = [await buf.take_job() for _ in range(3)]
            assert a and b and c
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(buf.complete, a)  # the first flush: start .. start + 1
                await trio.sleep(0.1)
                nursery.start_soon(buf.complete, b)  # b and c form the next flush: .. start + 2
                with trio.move_on_at(start + 2):
                    await buf.complete(c)
            assert buf.stats().completed == 3
        assert await source.job_states() == []


async def test_ack_after_lease_lost_raises(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    await source.enqueue("default", 1)
    async with open_job_buffer(source, "w") as buf:
        job = await buf.take_job()
        assert job is not None and await source.release([job]) == [job.id]  # someone took it back
        with pytest.raises(LeaseLostError):
            await buf.complete(job)
        assert buf.stats().lease_lost == 1


async def test_acks_are_group_committed(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    await source.enqueue_many("default", list(range(40)))
    async with open_job_buffer(source, "w") as buf:
        await trio.sleep(1)
        jobs = [await buf.take_job(0) for _ in range(40)]
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(buf.complete, job)
        assert buf.stats().completed == 40
        assert buf._acks.flushes <= 3


async def test_bad_arguments_are_config_errors(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(ConfigError, match="worker_id"):
        JobBuffer(MemoryJobSource(), "")
    with pytest.raises(ConfigError, match="config"):
        JobBuffer(MemoryJobSource(), "w", {"capacity": 3})  # type: ignore[arg-type]
    not_entered = open_postgres_source("postgresql://x@127.0.0.1:1/y")  # an AttributeError at start before
    with pytest.raises(ConfigError, match=r"is not a JobSource \(no claim, release, .*\): pass the source itself"):
        JobBuffer(not_entered, "w")  # type: ignore[arg-type]

    class Delegating:  # a wrapper that forwards to a source, and defines none of it itself
        def __init__(self, inner: MemoryJobSource) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    JobBuffer(Delegating(MemoryJobSource()), "w")  # type: ignore[arg-type]  # works: only the calls matter
    async with open_job_buffer(MemoryJobSource(), "w") as buf:
        with pytest.raises(ConfigError, match="timeout"):
            await buf.take_job(-1)

        async def noop(job: Job) -> None:
            pass

        with pytest.raises(ConfigError, match="concurrency"):
            await run_workers(buf, noop, concurrency=0)


@pytest.mark.parametrize("retry_in", [-1, math.inf, math.nan, 1e12, True])
async def test_fail_refuses_a_retry_in_that_is_no_delay(retry_in: float) -> None:
    # Regression: inf or a huge delay passed, and PostgreSQL then refused the whole group
    # commit ("interval out of range"), failing the other callers' acks with it.
    source = MemoryJobSource()
    await source.enqueue("default", 1)
    with trio.fail_after(10):
        async with open_job_buffer(source, "w") as buf:
            job = await buf.take_job()
            assert job is not None
            with pytest.raises(ConfigError, match=r"retry_in=.* is invalid: pass seconds from 0 to"):
                await buf.fail(job, "boom", retry_in=retry_in)
            await buf.fail(job, "boom", retry_in=Fraction(100 * 365 * 86400))  # the longest; any real number
    assert [s.status for s in await source.job_states([job.id])] == ["pending"]


async def test_fail_uses_backoff_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    (job_id,) = await source.enqueue_many("default", [1])
    attempts: list[float] = []
    succeeded = trio.Event()

    async def flaky(job: Job) -> None:
        attempts.append(trio.current_time())
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        succeeded.set()

    cfg = BufferConfig(retry_base=1800, poll_interval=60)  # 30-minute first backoff
    async with open_job_buffer(source, "w", cfg) as buf:
        with trio.move_on_after(4 * 3600):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_workers, buf, flaky)
                await succeeded.wait()
                nursery.cancel_scope.cancel()  # the returned handler's ack still lands
    assert len(attempts) == 3
    assert 900 <= attempts[1] - attempts[0] <= 1800 + 61
    assert 1800 <= attempts[2] - attempts[1] <= 3600 + 61
    assert await source.job_states([job_id]) == []


def test_retry_jitter_does_not_follow_the_programs_random_seed() -> None:
    # Regression: jitter drew from the global random, so processes that all seed it alike
    # retried in lockstep after an outage.
    buf = JobBuffer(MemoryJobSource(), "w")
    delays = []
    for _ in range(2):
        random.seed(0)
        delays.append(buf.retry_delay(10))
    assert delays[0] != delays[1]


def test_retry_jitter_differs_between_forked_processes() -> None:
    # In a fresh interpreter: forking this (multi-threaded) test process would be unsafe.
    code = textwrap.dedent(
        """
        import os
        from jobbuf import _jitter
        draws = []
        for _ in range(3):
            read, write = os.pipe()
            if os.fork() == 0:
                os.write(write, repr(_jitter.uniform(0, 1)).encode())
                os._exit(0)
            os.close(write)
            draws.append(os.read(read, 100).decode())
            os.wait()
        print(len(set(draws)))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "3", result.stderr


async def test_start_failure_surfaces_at_once_as_itself(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    source.fail_next("heartbeat", DatabaseUnavailableError("no database"))
    start = trio.current_time()
    with pytest.raises(DatabaseUnavailableError, match="no database"):  # not an ExceptionGroup
        async with open_job_buffer(source, "w"):
            pytest.fail("the body must not run")
    assert trio.current_time() - start < 0.1  # no shutdown retries: nothing was claimed


async def test_subscribe_stats_yields_snapshots_and_rates_come_from_deltas() -> None:
    # Real time: snapshot_at is wall-clock (it is compared across processes).
    source = MemoryJobSource()
    await source.enqueue_many("default", list(range(30)))
    snapshots = []
    cfg = BufferConfig(stats_interval=0.2)
    with trio.fail_after(10):
        async with open_job_buffer(source, "w", cfg) as buf, trio.open_nursery() as nursery:

            async def consume() -> None:
                while True:
                    job = await buf.take_job()
                    await buf.complete(job)  # type: ignore[arg-type]
                    await trio.sleep(0.02)

            nursery.start_soon(consume)
            async for snap in buf.subscribe_stats():
                snapshots.append(snap)
                if len(snapshots) == 3:
                    break
            nursery.cancel_scope.cancel()
    assert [s.running for s in snapshots] == [True, True, True]
    assert snapshots[-1].snapshot_at > snapshots[0].snapshot_at
    assert snapshots[-1].completed > snapshots[0].completed
    per_second = rates(snapshots[0], snapshots[-1])
    elapsed = snapshots[-1].snapshot_at - snapshots[0].snapshot_at
    assert per_second["completed"] == pytest.approx((snapshots[-1].completed - snapshots[0].completed) / elapsed)
    assert rates(snapshots[0], snapshots[0])["taken"] == 0.0


async def test_entries_are_not_handed_out_once_their_lease_may_have_lapsed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # With heartbeats failing, a buffered job's lease is not extended; past 0.8 x lease it
    # could be rescued by another buffer, so it must be discarded (released), not handed out.
    source = MemoryJobSource()
    await source.enqueue("default", 1)
    cfg = BufferConfig(lease=10, ttl=60, capacity=1, low_water=1, poll_interval=1000)
    async with open_job_buffer(source, "w", cfg) as buf:
        await trio.sleep(0.1)
        source.fail_next("heartbeat", DatabaseUnavailableError("down"), times=10_000)
        await trio.sleep(5)
        assert (buf.depth, buf.stats().discarded) == (1, 0)
        await trio.sleep(4)  # past 0.8 x lease since the claim
        assert buf.stats().discarded >= 1 and buf.stats().released >= 1
        assert buf.stats().poll_errors > 0  # the failing heartbeats are counted


async def test_cancelled_during_start_does_not_hang(autojump_clock: trio.testing.MockClock) -> None:
    # Regression: the run scope was shielded before nursery.start() returned, so a caller
    # cancelled during start-up waited forever for a run that could not be cancelled.
    source = MemoryJobSource()
    with trio.move_on_after(60) as outer:
        with trio.move_on_after(0) as inner:
            async with open_job_buffer(source, "w"):
                pytest.fail("the body must not run")
        assert inner.cancelled_caught
    assert not outer.cancelled_caught


async def test_handler_raising_its_own_too_slow_error_is_an_ordinary_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: with job_timeout=None, a handler's own TooSlowError crashed run_workers
    # with a TypeError and the job came back forever.
    source = MemoryJobSource()
    (job_id,) = await source.enqueue_many("default", [1], max_attempts=1)

    async def impatient(job: Job) -> None:
        with trio.fail_after(1):
            await trio.sleep(2)

    async with open_job_buffer(source, "w") as buf:
        with trio.move_on_after(10):
            await run_workers(buf, impatient, concurrency=1)
    (state,) = await source.job_states([job_id])
    assert state.status == "dead" and "TooSlowError" in (state.last_error or "")


async def test_shutdown_failure_while_cancelled_is_one_plain_error(autojump_clock: trio.testing.MockClock) -> None:
    # Regression: [Cancelled, DatabaseUnavailableError] came out as an ExceptionGroup.
    source = MemoryJobSource()
    await source.enqueue_many("default", [1, 2])
    with pytest.raises(DatabaseUnavailableError, match="could not release"), trio.CancelScope() as scope:
        async with open_job_buffer(source, "w", BufferConfig(shutdown_timeout=1)) as buf:
            await trio.sleep(1)
            assert buf.depth == 2
            source.fail_next("release_owner", DatabaseUnavailableError("down"), times=100)
            scope.cancel()
            await trio.sleep_forever()


async def test_cancelled_stop_still_releases_the_buffered_jobs(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    await source.enqueue_many("default", [1, 2, 3])
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=1000)) as buf:
        await trio.sleep(1)
        assert buf.depth == 3
        with pytest.raises(ConfigError, match="join_timeout"):
            await buf.stop(join_timeout=-1)
        with trio.CancelScope() as scope:
            scope.cancel()
            await buf.stop(release=False)  # cancelled at once: nobody receives the jobs...
        assert buf.depth == 0 and await buf.stop() == []
        # ...so they went back even with release=False
        assert {s.status for s in await source.job_states()} == {"pending"}


async def test_jobs_stop_could_not_release_are_released_or_named_by_the_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: a release that failed in stop() forgot the jobs, so an exit that could
    # not release either raised nothing while their rows stayed claimed.
    source = MemoryJobSource()
    await source.enqueue_many("default", [1, 2, 3])
    with pytest.raises(DatabaseUnavailableError, match=r"could not release jobs \[1, 2, 3\]"):
        async with open_job_buffer(source, "w", BufferConfig(poll_interval=1000)) as buf:
            await trio.sleep(1)
            source.fail_next("release", DatabaseUnavailableError("down"))
            assert len(await buf.stop()) == 3 and buf.stats().poll_errors == 1
            source.fail_next("release_owner", DatabaseUnavailableError("down"), times=100)
    assert {s.status for s in await source.job_states()} == {"claimed"}
    # and when the database answers at the exit, they go back
    source = MemoryJobSource()
    await source.enqueue_many("default", [1, 2, 3])
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=1000)) as buf:
        await trio.sleep(1)
        source.fail_next("release", DatabaseUnavailableError("down"))
        await buf.stop()
    assert {s.status for s in await source.job_states()} == {"pending"}


async def test_stop_racing_the_exit_never_hands_out_jobs_the_exit_releases(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: stop(release=False) waiting for a slow claim when the exit began handed
    # the caller the jobs the exit then released (offered-in ones, under another claim):
    # the caller held jobs whose rows were pending again, free for anyone to claim.
    class SlowClaims(SlowAckSource):
        slow = False

        async def claim(self, **kw: Any) -> ClaimResult:
            if self.slow:
                await trio.sleep(2)
            return await super().claim(**kw)

    source = SlowClaims()
    await source.enqueue_many("default", [1, 2, 3])
    async with open_job_buffer(source, "a", BufferConfig(poll_interval=1000)) as a:
        await trio.sleep(0.01)
        moved = await a.stop(release=False)  # claimed by a, handed off
    source.slow = True
    got: list[Job] = []
    cfg = BufferConfig(capacity=10, low_water=10, poll_interval=0.05)
    async with trio.open_nursery() as outer, open_job_buffer(source, "b", cfg) as b:
        assert b.offer_jobs(moved) == 3
        taken = await b.take_job()
        assert taken is not None
        await trio.sleep(0.1)  # b's claim is in flight (2 s)

        async def stopper() -> None:
            got.extend(await b.stop(release=False))  # waits for that claim

        outer.start_soon(stopper)
        await trio.sleep(1.4)
        outer.start_soon(b.complete, taken)  # a flush of 1 s, still in flight when...
        await trio.sleep(0.1)
        # ...b's exit begins, while stop() waits: the exit's drain of that flush lets
        # stop() run in the middle of the exit
    states = {s.id: s.status for s in await source.job_states()}
    assert all(states[job.id] == "claimed" for job in got), (got, states)  # whatever stop() handed out is held
    assert got or set(states.values()) <= {"pending", "done"}  # and what it did not, went back


async def test_jobs_a_stop_fails_to_release_while_the_exit_begins_are_released_by_the_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: the exit read its books before a stop() still releasing had put back the
    # jobs it failed to release; offered-in ones (under another buffer's claim, so not
    # covered by the release by owner) were then neither released nor named.
    class Source(SlowAckSource):
        fail_release = False

        async def release(self, jobs: Sequence[Job]) -> list[int]:
            if self.fail_release and jobs:
                self.fail_release = False  # once: the exit's own release works
                await trio.sleep(1)
                raise DatabaseUnavailableError("release reply lost")
            return await super().release(jobs)

    source = Source()
    await source.enqueue_many("default", [1, 2, 3])
    async with open_job_buffer(source, "a", BufferConfig(poll_interval=1000)) as a:
        await trio.sleep(0.01)
        moved = await a.stop(release=False)
    cfg = BufferConfig(poll_interval=1000, capacity=10, low_water=1)
    async with trio.open_nursery() as outer, open_job_buffer(source, "b", cfg) as b:
        assert b.offer_jobs(moved) == 3
        taken = await b.take_job()
        assert taken is not None
        outer.start_soon(b.complete, taken)  # an ack in flight (1 s) when the exit begins
        await trio.sleep(0.1)
        source.fail_release = True
        outer.start_soon(b.stop)  # releases the other two: slowly, and fails
        await trio.sleep(0.1)
        # the exit begins while stop()'s release is pending
    assert b.stats().poll_errors == 1
    assert await _states(source) == {job.id: ("pending", 0) for job in moved if job.id != taken.id}


async def test_the_exit_names_only_the_jobs_it_could_not_release(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    await source.enqueue_many("default", ["x"])
    cfg = BufferConfig(capacity=1, low_water=1)
    async with open_job_buffer(source, "a", cfg) as a:
        await trio.sleep(0.1)
        (x,) = await a.stop(release=False)  # handed off: still claimed by a
    (y_id,) = await source.enqueue_many("default", ["y"])
    with pytest.raises(DatabaseUnavailableError, match=rf"could not release jobs \[{x.id}\]"):
        async with open_job_buffer(source, "b", cfg) as b:
            assert (await b.take_job()) is not None  # b's own claim: released by owner
            assert b.offer_jobs([x]) == 1  # under a's claim: released by that claim, which fails
            source.fail_next("release", DatabaseUnavailableError("down"))
    assert await _states(source) == {x.id: ("claimed", 1), y_id: ("pending", 0)}


async def test_offer_jobs_with_a_bad_item_takes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with open_job_buffer(MemoryJobSource(), "w", BufferConfig(poll_interval=1000)) as buf:
        good = Job(id=1, queue="default", payload=None)
        with pytest.raises(TypeError, match="Job objects"):
            buf.offer_jobs([good, {"id": 2}])  # type: ignore[list-item]
        assert (buf.depth, buf.stats().offered) == (0, 0)


class GoneSource(MemoryJobSource):
    """Answers until ``gone`` is set; from then on every call hangs (a blackholed server)."""

    gone = False

    async def _enter(self, method: str) -> Any:
        if self.gone:
            await trio.sleep_forever()
        return await super()._enter(method)


async def leave_once_the_database_is_gone(
    source: GoneSource,
    cfg: BufferConfig,
    lose: Callable[[JobBuffer], Awaitable[None]],
    error: str = "could not release",
) -> None:
    """Open a buffer on ``source``, let ``lose(buf)`` take jobs and set ``source.gone``, and
    leave at trio time 0.5: the exit cannot release what it holds (it raises ``error``),
    and it must end exactly one ``shutdown_timeout`` later, whatever was in flight."""
    with pytest.raises(DatabaseUnavailableError, match=error), trio.move_on_at(0.5):
        async with open_job_buffer(source, "w", cfg) as buf:
            await lose(buf)
            await trio.sleep_forever()
    assert trio.current_time() == pytest.approx(0.5 + cfg.shutdown_timeout)


async def test_exit_with_the_database_gone_takes_one_shutdown_timeout_not_one_per_phase(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: claims in flight waited shutdown_timeout, then the exit's flush and
    # release waited shutdown_timeout again (2x here).
    source = GoneSource()
    await source.enqueue_many("default", list(range(100)))

    async def lose(buf: JobBuffer) -> None:
        await trio.sleep(0.1)
        assert buf.depth == 60
        source.gone = True
        for _ in range(30):  # below low water: claims start, and hang
            assert await buf.take_job() is not None
        await trio.sleep(0.1)
        assert buf._claiming > 0

    cfg = BufferConfig(capacity=60, low_water=50, batch_size=20, shutdown_timeout=1.0)
    await leave_once_the_database_is_gone(source, cfg, lose, r"could not release 60 jobs \(1, 2, .* and 40 more\)")


async def test_stop_with_a_claim_hanging_returns_within_shutdown_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = GoneSource()
    await source.enqueue_many("default", list(range(5)))
    async with open_job_buffer(source, "w", BufferConfig(capacity=5, low_water=3, shutdown_timeout=1.0)) as buf:
        await trio.sleep(0.1)
        assert [await buf.take_job() for _ in range(3)]
        source.gone = True
        await trio.sleep(0.1)  # a claim is in flight, and hangs; so will the release
        started = trio.current_time()
        assert len(await buf.stop()) == 2
        assert trio.current_time() - started == pytest.approx(1.0)
        source.gone = False  # back before the exit: everything is released
    assert {s.status for s in await source.job_states()} == {"pending"}


class SlowReleaseOwner(MemoryJobSource):
    """Its first claim fails (it may have committed: the poller will release unseen rows
    by owner) and that release takes 20 s: a database that stopped answering for a while."""

    claims = 0
    slow = True

    async def claim(self, **kw: Any) -> ClaimResult:
        self.claims += 1
        if self.claims == 1:
            raise OSError("connection reset")
        return await super().claim(**kw)

    async def release_owner(self, owner: str, keep: Collection[int] = ()) -> list[int]:
        if self.slow:
            self.slow = False
            await trio.sleep(20)
        return await super().release_owner(owner, keep)


async def test_stop_after_a_poller_round_longer_than_shutdown_timeout_still_hands_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: stop() waited for the poller past its deadline; the drain then began
    # with that deadline gone, and stop() raised UnboundLocalError instead of returning.
    source = SlowReleaseOwner()
    ids = await source.enqueue_many("default", [1, 2])
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=2.0)) as buf:  # shutdown_timeout 10
        await trio.sleep(3)  # both claimed; the poller is in the 20 s release
        assert buf.depth == 2
        jobs = await buf.stop(release=False)
        assert sorted(j.id for j in jobs) == ids
        for job in jobs:
            await buf.complete(job)  # still ours to ack
    assert await source.job_states() == []


async def test_stop_whose_poller_outlives_shutdown_timeout_hands_out_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Stuck(SlowReleaseOwner):  # the poller's release of unseen rows ignores cancellation
        async def release_owner(self, owner: str, keep: Collection[int] = ()) -> list[int]:
            if self.slow:
                self.slow = False
                with trio.CancelScope(shield=True):
                    await trio.sleep(20)
            return await MemoryJobSource.release_owner(self, owner, keep)

    source = Stuck()
    await source.enqueue_many("default", [1, 2])
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=2.0)) as buf:  # shutdown_timeout 10
        await trio.sleep(3)
        assert buf.depth == 2
        started = trio.current_time()
        assert await buf.stop(join_timeout=0) == []  # the poller still runs: the exit releases them
        assert trio.current_time() - started == pytest.approx(10.0)
    assert {(s.status, s.attempts) for s in await source.job_states()} == {("pending", 0)}


async def test_a_release_cut_off_by_stops_deadline_counts_as_failed(autojump_clock: trio.testing.MockClock) -> None:
    source = SlowReleaseOwner()
    await source.enqueue_many("default", [1, 2])
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=2.0)) as buf:
        await trio.sleep(3)  # the poller is in its 20 s release: stop's 10 s are gone by the drain
        errors = buf.stats().poll_errors
        assert len(await buf.stop()) == 2
        stats = buf.stats()
        assert stats.poll_errors == errors + 1
        assert stats.last_error == "stop: TimeoutError: release not done within shutdown_timeout (10s)"
    assert {(s.status, s.attempts) for s in await source.job_states()} == {("pending", 0)}  # the exit released them


async def test_a_stop_cancelled_after_shutdown_timeout_is_just_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = SlowReleaseOwner()
    await source.enqueue_many("default", [1, 2])
    async with open_job_buffer(source, "w", BufferConfig(poll_interval=2.0)) as buf:
        await trio.sleep(3)
        with trio.move_on_after(15) as waited:  # the caller gives up on stop() after 15 s
            await buf.stop()
        assert waited.cancelled_caught  # an UnboundLocalError before
    assert {(s.status, s.attempts) for s in await source.job_states()} == {("pending", 0)}  # the exit released them


async def test_a_late_exit_after_stop_still_gets_its_whole_shutdown_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # stop() bounds its own wait; the exit, long after, gets a deadline of its own: the
    # ack queued at exit is flushed and the job still held is released, with no error.
    source = MemoryJobSource()
    await source.enqueue_many("default", list(range(4)))
    async with open_job_buffer(source, "w", BufferConfig(shutdown_timeout=1.0)) as buf:
        done, held = await buf.take_job(), await buf.take_job()
        assert done is not None and held is not None
        assert len(await buf.stop()) == 2
        await trio.sleep(10)
        buf._ack_soon(Ack(done))  # queued (as run_workers leaves it), flushed by the exit
    states = {s.id: s.status for s in await source.job_states()}
    assert done.id not in states and states[held.id] == "pending"
    assert buf.stats().completed == 1


async def test_an_ack_queued_when_the_exit_begins_is_flushed_by_the_exit_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: a claim in flight delayed the shutdown, whose drain then led a flush of
    # the queued ack with a deadline of its own, past the exit's.
    source = GoneSource()
    await source.enqueue_many("default", list(range(10)))

    async def lose(buf: JobBuffer) -> None:
        await trio.sleep(0.1)
        jobs = [await buf.take_job() for _ in range(3)]
        source.gone = True
        await trio.sleep(0.1)  # a claim is in flight, and hangs
        assert buf._claiming > 0 and jobs[0] is not None
        buf._ack_soon(Ack(jobs[0]))

    await leave_once_the_database_is_gone(source, BufferConfig(capacity=5, low_water=3, shutdown_timeout=1.0), lose)


async def test_stop_called_during_the_exit_does_not_push_its_deadline(autojump_clock: trio.testing.MockClock) -> None:
    source = GoneSource()
    await source.enqueue_many("default", list(range(10)))
    buffers: list[JobBuffer] = []

    async def stop_later() -> None:
        await trio.sleep(1.0)  # the exit began at 0.5, its claim is still in flight
        assert buffers[0].running
        with trio.CancelScope(shield=True):
            await buffers[0].stop()

    async def lose(buf: JobBuffer) -> None:
        buffers.append(buf)
        await trio.sleep(0.1)
        assert [await buf.take_job() for _ in range(3)]
        source.gone = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_later)
        await leave_once_the_database_is_gone(source, BufferConfig(capacity=5, low_water=3, shutdown_timeout=1.0), lose)


async def test_run_workers_cleanup_and_the_exit_take_at_most_two_shutdown_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: releases of cancelled handlers' jobs, then the final ack flush, then a
    # flush the pump started late, then the exit each waited their own shutdown_timeout.
    source = GoneSource()
    await source.enqueue_many("default", list(range(200)))
    cfg = BufferConfig(capacity=100, low_water=90, batch_size=10, shutdown_timeout=1.0)

    async def handler(job: Job) -> None:
        await trio.sleep(0.05)

    with pytest.raises(DatabaseUnavailableError, match="could not release"):
        with trio.move_on_after(0.3):
            async with open_job_buffer(source, "w", cfg) as buf, trio.open_nursery() as nursery:
                nursery.start_soon(partial(run_workers, buf, handler, concurrency=20))
                await trio.sleep(0.2)
                assert buf.stats().completed > 0
                source.gone = True
    assert trio.current_time() <= 0.3 + 2 * 1.0 + 1e-9
