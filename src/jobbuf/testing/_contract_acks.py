"""The source contract, part two: acks, leases, wake-ups and operator methods (private;
the public suite is :class:`jobbuf.testing.SourceContract`, which inherits these tests)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import trio

from .._job import Claim, Job
from .._source import Ack, JobSource, WorkerInfo
from ._contract_support import TIMEOUT, ContractOptions, claim, claim_until, past, row_state

__all__ = ["AckLeaseAndOperatorContract"]


class AckLeaseAndOperatorContract(ContractOptions):
    """Acks, leases, wake-ups and operator methods of every :class:`JobSource`."""

    # -- acks ----------------------------------------------------------------------------
    async def test_complete_deletes_the_row_or_keeps_it_done(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [job] = (await claim(source)).jobs
            assert await source.ack([Ack(job)], default_max_attempts=20) == ["done"]
            states = await source.job_states([job_id])
            if self.keeps_completed:
                assert [(s.status, s.owner) for s in states] == [("done", None)]
                [counts] = await source.queue_counts()
                assert (counts.done, counts.pending, counts.claimed) == (1, 0, 0)
            else:
                assert states == []
            assert (await claim(source)).jobs == []
            # Acking again may say "done" (a retried ack after a lost reply) but changes nothing.
            assert await source.ack([Ack(job, "late")], default_max_attempts=20) == ["lost"]
            assert await source.job_states([job_id]) == states

    async def test_ack_with_a_wrong_or_stale_claim_is_lost_and_changes_nothing(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [old] = (await claim(source, "owner-a")).jobs
            await source.release([old])
            [new] = (await claim(source, "owner-b")).jobs
            assert new.claim is not None
            before = await row_state(source, job_id)
            forged = [
                old,  # released, then reclaimed by someone else
                Job(id=job_id, queue="default", payload="x", claim=Claim("owner-b", new.claim.token ^ 1)),
                Job(id=job_id, queue="default", payload="x", claim=Claim("owner-a", new.claim.token)),
                Job(id=job_id, queue="default", payload="x"),  # built by hand: no claim
            ]
            outcomes = await source.ack([Ack(j) for j in forged] + [Ack(old, "boom")], default_max_attempts=20)
            assert outcomes == ["lost"] * 5
            assert await row_state(source, job_id) == before
            assert await source.ack([Ack(new)], default_max_attempts=20) == ["done"]

    async def test_a_second_failure_of_one_claim_is_lost_and_changes_nothing(self, source: JobSource) -> None:
        # The first was applied; a second ack is no retry of it (a source that retries an
        # ack after a lost reply recognises its own first try, PostgresJobSource.ack).
        with trio.fail_after(TIMEOUT):
            pending = await source.enqueue("default", "x")
            dead = await source.enqueue("default", "y", max_attempts=1)
            jobs = {job.id: job for job in (await claim(source)).jobs}
            first = [Ack(jobs[pending], "boom", retry_in=3600.0), Ack(jobs[dead], "boom")]
            assert await source.ack(first, default_max_attempts=20) == ["retry", "dead"]
            before = [await row_state(source, i) for i in (pending, dead)]
            second = [Ack(a.job, "boom again", retry_in=0.0) for a in first] + [Ack(jobs[pending])]
            assert await source.ack(second, default_max_attempts=20) == ["lost"] * 3
            assert [await row_state(source, i) for i in (pending, dead)] == before

    async def test_fail_schedules_a_retry_with_its_error(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x", run_at=past(1))
            enqueued = await row_state(source, job_id)
            [job] = (await claim(source)).jobs
            assert await source.ack([Ack(job, "boom", retry_in=60.0)], default_max_attempts=20) == ["retry"]
            state = await row_state(source, job_id)
            assert (state.status, state.attempts, state.owner, state.last_error) == ("pending", 1, None, "boom")
            assert state.run_at - enqueued.run_at > timedelta(seconds=59)
            assert (await claim(source)).jobs == []

    async def test_fail_with_retry_in_zero_is_claimable_again_with_attempts_counted(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [job] = (await claim(source)).jobs
            assert await source.ack([Ack(job, "boom")], default_max_attempts=20) == ["retry"]
            [again] = (await claim(source)).jobs
            assert (again.id, again.attempts) == (job_id, 2)

    async def test_fail_on_the_last_attempt_makes_the_job_dead(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x", max_attempts=2)
            [job] = (await claim(source)).jobs
            assert await source.ack([Ack(job, "first")], default_max_attempts=20) == ["retry"]
            [job] = (await claim(source)).jobs
            assert job.attempts == 2
            assert await source.ack([Ack(job, "second")], default_max_attempts=20) == ["dead"]
            state = await row_state(source, job_id)
            assert (state.status, state.attempts, state.owner, state.last_error) == ("dead", 2, None, "second")
            assert (await claim(source)).jobs == []

    async def test_default_max_attempts_applies_when_enqueued_without(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            plain = await source.enqueue("default", "plain")
            own = await source.enqueue("default", "own", max_attempts=3)
            jobs = {j.id: j for j in (await claim(source, default_max_attempts=1)).jobs}
            assert (jobs[plain].max_attempts, jobs[own].max_attempts) == (1, 3)
            assert [s.max_attempts for s in await source.job_states([plain, own])] == [None, 3]
            acks = [Ack(jobs[plain], "e"), Ack(jobs[own], "e")]
            assert await source.ack(acks, default_max_attempts=1) == ["dead", "retry"]

    async def test_ack_returns_one_outcome_per_ack_in_order(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            await source.enqueue_many("default", ["a", "b", "c", "d"], max_attempts=1)
            a, b, c, d = (await claim(source)).jobs
            await source.release([d])
            acks = [Ack(c, "x"), Ack(a), Ack(d), Ack(b, "y", retry_in=5.0)]
            assert await source.ack(acks, default_max_attempts=20) == ["dead", "done", "lost", "dead"]
            assert await source.ack([], default_max_attempts=20) == []

    async def test_completions_in_one_batch_are_matched_one_by_one(self, source: JobSource) -> None:
        # Completions only, of one owner's claims (a source may have a faster path for
        # that), then of two owners' claims: each ack is matched against its own claim.
        with trio.fail_after(TIMEOUT):
            await source.enqueue_many("default", ["a", "b", "c"])
            a, b, c = (await claim(source, "owner-a", limit=3)).jobs
            await source.release([b])
            [b2] = (await claim(source, "owner-b", limit=1)).jobs  # b, now owner-b's
            await source.release([c])
            [c2] = (await claim(source, "owner-a", limit=1)).jobs  # c, owner-a's under a new claim
            assert await source.ack([Ack(a), Ack(b), Ack(c)], default_max_attempts=20) == ["done", "lost", "lost"]
            assert await source.ack([Ack(b2), Ack(c2)], default_max_attempts=20) == ["done", "done"]
            assert [s.status for s in await source.job_states()] in ([], ["done"] * 3)

    # -- leases --------------------------------------------------------------------------
    async def test_expired_lease_is_rescued_by_another_owner(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [old] = (await claim(source, "owner-a", lease=self.lease)).jobs
            result = await claim_until(source, "owner-b", 30.0, lambda r: bool(r.jobs))
            [new] = result.jobs
            assert (new.id, new.attempts, result.dead) == (job_id, 2, 0)
            assert new.claim is not None and new.claim.owner == "owner-b"
            assert await source.ack([Ack(old)], default_max_attempts=20) == ["lost"]
            assert await source.release([old]) == []
            assert await source.release_owner("owner-a") == []
            assert (await row_state(source, job_id)).owner == "owner-b"
            assert await source.ack([Ack(new)], default_max_attempts=20) == ["done"]

    async def test_rescued_rows_take_their_turn_in_claim_order(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            low = await source.enqueue("default", "low", priority=0)
            await claim(source, "owner-a", lease=self.lease)  # holder "crashes" with it
            await trio.sleep(self.lease + 0.1)
            high = await source.enqueue("default", "high", priority=5)
            first = await claim(source, "owner-b", limit=1)
            second = await claim(source, "owner-b", limit=1)
            # the higher priority pending job before the rescued lower priority one
            assert [j.id for j in first.jobs + second.jobs] == [high, low]

    async def test_rescue_without_attempts_left_makes_the_job_dead(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x", max_attempts=1)
            await claim(source, "owner-a", lease=self.lease)
            result = await claim_until(source, "owner-b", 30.0, lambda r: bool(r.jobs) or r.dead > 0)
            assert (result.jobs, result.dead) == ([], 1)
            state = await row_state(source, job_id)
            assert (state.status, state.attempts, state.owner) == ("dead", 1, None)
            assert state.last_error

    async def test_heartbeat_extends_leases_of_held_jobs(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            worker = WorkerInfo("worker-a", "owner-a", "host", 1, ("default",), datetime.now(UTC))
            await source.enqueue("default", "x")
            held = (await claim(source, "owner-a", lease=self.lease)).jobs
            deadline = trio.current_time() + 3 * self.lease
            while trio.current_time() < deadline:
                await source.heartbeat(worker, held, self.lease, {"depth": 1})
                assert (await claim(source, "owner-b", lease=self.lease)).jobs == []
                await trio.sleep(self.lease / 4)
            await source.heartbeat(worker, held, None, {"depth": 1})  # stats only: no extension
            result = await claim_until(source, "owner-b", 30.0, lambda r: bool(r.jobs))
            assert [j.id for j in result.jobs] == [held[0].id]
            await source.deregister("owner-a")
            await source.deregister("owner-a")  # idempotent

    # -- wake-ups ------------------------------------------------------------------------
    async def test_listen_fires_on_enqueue_of_a_subscribed_queue_only(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            calls: list[str] = []
            woke = trio.Event()

            def on_a() -> None:
                calls.append("a")
                woke.set()

            unsubscribe = source.listen(["a"], on_a)
            try:
                await source.enqueue("b", "not for us")
                await source.enqueue_many("a", [1, 2, 3])
                await woke.wait()
                await trio.sleep(0.1)  # any notification for "b" would have arrived first
                assert calls == ["a"]  # one wake-up per statement, never one per row
            finally:
                unsubscribe()

    async def test_releases_wake_listeners_of_the_released_queues(self, source: JobSource) -> None:
        # A released job is ready again, and nothing else would tell other buffers.
        with trio.fail_after(TIMEOUT):
            woke: dict[str, trio.Event] = {"a": trio.Event(), "b": trio.Event()}

            def waker(queue: str) -> Callable[[], None]:
                return lambda: woke[queue].set()

            unsubscribe = [source.listen([q], waker(q)) for q in ("a", "b")]
            try:
                await source.enqueue("a", 1)
                await source.enqueue("b", 2)
                for event in woke.values():
                    await event.wait()  # the enqueues' own wake-ups are in
                held = (await claim(source, queues=("a", "b"), limit=10)).jobs
                assert sorted(j.queue for j in held) == ["a", "b"]
                woke.update(a=trio.Event(), b=trio.Event())
                assert await source.release([j for j in held if j.queue == "a"]) == [held[0].id]
                await woke["a"].wait()
                assert not woke["b"].is_set()
                assert await source.release_owner("owner-a") == [held[1].id]
                await woke["b"].wait()
            finally:
                for stop in unsubscribe:
                    stop()

    async def test_listen_stops_after_unsubscribe(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            gone: list[int] = []
            sentinel = trio.Event()
            unsubscribe = source.listen(["default"], lambda: gone.append(1))
            stop_sentinel = source.listen(["default"], sentinel.set)
            try:
                unsubscribe()
                await source.enqueue("default", "x")
                await sentinel.wait()  # the wake-up was delivered...
                await trio.sleep(0.1)
                assert gone == []  # ...but not to the unsubscribed callback
            finally:
                stop_sentinel()
                unsubscribe()  # idempotent

    # -- operators -----------------------------------------------------------------------
    async def test_queue_counts_by_queue_and_status(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            await source.enqueue("a", "dies", max_attempts=1)
            [dies] = (await claim(source, queues=("a",))).jobs
            await source.ack([Ack(dies, "boom")], default_max_attempts=20)
            await source.enqueue("a", "held")
            await claim(source, queues=("a",))
            await source.enqueue("a", "ready", run_at=past(60))
            await source.enqueue("a", "later", run_at=datetime.now(UTC) + timedelta(hours=1))
            await source.enqueue_many("b", [1, 2])
            counts = {c.queue: c for c in await source.queue_counts()}
            assert list(counts) == ["a", "b"]
            a, b = counts["a"], counts["b"]
            assert (a.pending, a.scheduled, a.claimed, a.dead, a.done) == (1, 1, 1, 1, 0)
            assert (b.pending, b.scheduled, b.claimed, b.dead, b.done) == (2, 0, 0, 0, 0)
            assert a.oldest_pending_age is not None and a.oldest_pending_age > 50
            assert b.oldest_pending_age is not None and b.oldest_pending_age >= 0

    async def test_requeue_dead_resets_attempts_and_keeps_the_error(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            enqueued = trio.Event()
            stop = source.listen(["default"], enqueued.set)
            ids = await source.enqueue_many("default", [1, 2, 3], max_attempts=1)
            await enqueued.wait()  # so a late wake-up from this enqueue cannot count below
            stop()
            other = await source.enqueue("other", 4, max_attempts=1)
            jobs = (await claim(source, queues=("default", "other"))).jobs
            await source.ack([Ack(j, "boom") for j in jobs], default_max_attempts=20)
            requeued = trio.Event()
            stop = source.listen(["default"], requeued.set)
            assert await source.requeue_dead("default", [ids[0], other]) == [ids[0]]
            await requeued.wait()  # ready again: listeners are told, as for an enqueue
            stop()
            first = await row_state(source, ids[0])
            assert (first.status, first.attempts, first.last_error) == ("pending", 0, "boom")
            woke = trio.Event()
            stop = source.listen(["default"], woke.set)
            try:
                assert sorted(await source.requeue_dead("default")) == ids[1:]
                await woke.wait()
            finally:
                stop()
            assert await source.requeue_dead("default") == []
            assert (await row_state(source, other)).status == "dead"
            again = (await claim(source)).jobs
            assert sorted(j.id for j in again) == ids and all(j.attempts == 1 for j in again)
