"""``SourceContract``: a reusable pytest suite that any :class:`JobSource` must pass.

Use it by subclassing in a test module and providing a ``source`` fixture (in the class or
a conftest) that yields a **fresh, empty** source private to the test::

    class TestMySource(SourceContract):
        @pytest.fixture
        async def source(self):
            async with open_my_source() as src:
                yield src

It needs pytest-trio with ``trio_mode = true``. The tests use only the Protocol's methods,
run in real time (never an autojump clock, so they also run against a real database) and
each finishes under ``trio.fail_after(10)``; lease-expiry tests use leases of
``lease`` seconds (a class attribute: raise it for a slow database).

Out of scope, because it is source-specific: quarantine of an undecodable payload (a
source has its own way to store one; test it in that source's own tests), and worker
registration as seen by readers (the Protocol has no method to read workers back).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from .._errors import ConfigError
from .._job import Claim, Job
from .._source import Ack, ClaimResult, JobSource, JobState, WorkerInfo

__all__ = ["SourceContract"]

TIMEOUT = 10.0


def _past(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


async def _claim(
    source: JobSource,
    owner: str = "owner-a",
    *,
    limit: int = 10,
    lease: float = 30.0,
    queues: tuple[str, ...] = ("default",),
    default_max_attempts: int = 20,
) -> ClaimResult:
    return await source.claim(
        owner=owner,
        worker_id=f"worker-{owner}",
        queues=queues,
        limit=limit,
        lease=lease,
        default_max_attempts=default_max_attempts,
    )


async def _state(source: JobSource, job_id: int) -> JobState:
    [state] = await source.job_states([job_id])
    return state


async def _claim_until(source: JobSource, owner: str, lease: float, done: Callable[[ClaimResult], bool]) -> ClaimResult:
    """Claim every 50 ms until ``done(result)``; the caller's fail_after bounds it."""
    while True:
        result = await _claim(source, owner, lease=lease)
        if done(result):
            return result
        await trio.sleep(0.05)


class SourceContract:
    """The behaviour every :class:`JobSource` shares (see ``DESIGN.md`` §1 and §2)."""

    lease: float = 0.3
    """Short real lease, in seconds, for the lease-expiry tests."""
    keeps_completed: bool = False
    """Set when the source keeps completed rows as ``done`` instead of deleting them."""

    # -- enqueue -------------------------------------------------------------------------
    async def test_enqueue_stores_a_pending_row_with_its_options(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            a = await source.enqueue("default", {"n": 1})
            b = await source.enqueue("default", [1, 2], priority=3, max_attempts=4)
            assert b > a
            sa, sb = await source.job_states([a, b])
            assert (sa.queue, sa.status, sa.attempts, sa.priority) == ("default", "pending", 0, 0)
            assert sa.max_attempts is None
            assert (sb.status, sb.priority, sb.max_attempts, sb.owner, sb.last_error) == ("pending", 3, 4, None, None)
            assert sa.run_at.tzinfo is not None

    async def test_enqueue_many_returns_ids_in_payload_order_with_shared_options(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            due = _past(30)
            ids = await source.enqueue_many("default", ["a", "b", "c"], priority=2, run_at=due, max_attempts=5)
            assert len(ids) == 3 and ids == sorted(ids) and len(set(ids)) == 3
            states = await source.job_states(ids)
            assert [(s.priority, s.max_attempts, s.status) for s in states] == [(2, 5, "pending")] * 3
            assert all(abs((s.run_at - due).total_seconds()) < 0.001 for s in states)
            jobs = (await _claim(source)).jobs
            assert [(j.id, j.payload) for j in jobs] == list(zip(ids, ["a", "b", "c"], strict=True))
            assert await source.enqueue_many("default", []) == []

    async def test_payload_round_trips_as_json(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            payload: Any = {"s": "é\n", "n": [1, 2.5, None, True], "t": (1, 2), "nested": {"k": {}}}
            await source.enqueue("default", payload)
            [job] = (await _claim(source)).jobs
            assert job.payload == {"s": "é\n", "n": [1, 2.5, None, True], "t": [1, 2], "nested": {"k": {}}}

    async def test_non_json_payload_is_type_error_and_writes_nothing(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            for bad in (object(), {"x": math.nan}, {1j: 1}):
                with pytest.raises(TypeError):
                    await source.enqueue("default", bad)
            with pytest.raises(TypeError):
                await source.enqueue_many("default", [{"ok": 1}, {"bad": {1, 2}}, {"ok": 2}])
            assert await source.job_states() == []
            assert await source.queue_counts() == []

    async def test_invalid_queue_name_or_max_attempts_is_config_error(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            for queue in ("", "bad-name", "1st", 'x"; drop table jobs; --'):
                with pytest.raises(ConfigError):
                    await source.enqueue(queue, {})
            for max_attempts in (0, -1):
                with pytest.raises(ConfigError, match="max_attempts"):
                    await source.enqueue("default", {}, max_attempts=max_attempts)
            assert await source.job_states() == []

    # -- claim ---------------------------------------------------------------------------
    async def test_claim_orders_by_priority_then_run_at_then_id(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            base = _past(60)
            a = await source.enqueue("default", "a", run_at=base)
            b = await source.enqueue("default", "b", run_at=base - timedelta(seconds=10))
            c = await source.enqueue("default", "c", run_at=base, priority=5)
            d = await source.enqueue("default", "d", run_at=base)
            e = await source.enqueue("default", "e", run_at=base - timedelta(seconds=100), priority=-1)
            first = await _claim(source, limit=2)
            assert [j.id for j in first.jobs] == [c, b]
            rest = await _claim(source, limit=10)
            assert [j.id for j in rest.jobs] == [a, d, e]

    async def test_future_run_at_is_not_claimed_until_due(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            later = await source.enqueue("default", "later", run_at=datetime.now(UTC) + timedelta(hours=1))
            soon = await source.enqueue("default", "soon", run_at=datetime.now(UTC) + timedelta(seconds=0.5))
            assert (await _claim(source)).jobs == []
            result = await _claim_until(source, "owner-a", 30.0, lambda r: bool(r.jobs))
            assert [j.id for j in result.jobs] == [soon]
            assert (await _state(source, later)).status == "pending"

    async def test_claim_respects_limit_and_queues(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            ids = await source.enqueue_many("default", list(range(5)))
            other = await source.enqueue("other", "x")
            first = await _claim(source, limit=3)
            assert [j.id for j in first.jobs] == ids[:3]
            assert [j.id for j in (await _claim(source, limit=10)).jobs] == ids[3:]
            assert (await _state(source, other)).status == "pending"
            both = await _claim(source, queues=("other", "default"), limit=10)
            assert [j.id for j in both.jobs] == [other]

    async def test_concurrent_claims_are_disjoint(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            ids = await source.enqueue_many("default", list(range(20)))
            results: dict[str, list[int]] = {}

            async def claim_as(owner: str) -> None:
                results[owner] = [j.id for j in (await _claim(source, owner, limit=12)).jobs]

            async with trio.open_nursery() as nursery:
                for owner in ("owner-a", "owner-b"):
                    nursery.start_soon(claim_as, owner)
            a, b = results["owner-a"], results["owner-b"]
            assert not set(a) & set(b)
            assert sorted(a + b) == ids[: len(a) + len(b)] and len(a + b) == 20

    async def test_claim_counts_an_attempt_and_records_the_claim(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", {"k": 1}, priority=1, max_attempts=7)
            [job] = (await _claim(source, "owner-a")).jobs
            assert (job.id, job.queue, job.payload, job.priority) == (job_id, "default", {"k": 1}, 1)
            assert (job.attempts, job.max_attempts) == (1, 7)
            assert job.claim is not None and job.claim.owner == "owner-a"
            assert job.run_at is not None and job.created_at is not None
            state = await _state(source, job_id)
            assert (state.status, state.attempts, state.owner, state.worker_id) == (
                "claimed",
                1,
                "owner-a",
                "worker-owner-a",
            )
            await source.release([job])
            [again] = (await _claim(source, "owner-a")).jobs
            assert again.claim is not None and again.claim != job.claim  # a fresh token per claim

    # -- release -------------------------------------------------------------------------
    async def test_release_gives_the_attempt_back_and_clears_the_owner(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [job] = (await _claim(source)).jobs
            assert await source.release([job]) == [job_id]
            state = await _state(source, job_id)
            assert (state.status, state.attempts, state.owner, state.worker_id) == ("pending", 0, None, None)
            [again] = (await _claim(source, "owner-b")).jobs
            assert (again.id, again.attempts) == (job_id, 1)

    async def test_release_with_a_stale_claim_does_nothing(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [old] = (await _claim(source, "owner-a")).jobs
            await source.release([old])
            [new] = (await _claim(source, "owner-b")).jobs
            before = await _state(source, job_id)
            assert await source.release([old]) == []
            assert await source.release([Job(id=job_id, queue="default", payload="x")]) == []  # no claim
            assert await _state(source, job_id) == before
            assert before.owner == "owner-b" and new.claim is not None

    async def test_release_owner_releases_that_owner_except_kept(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            ids = await source.enqueue_many("default", list(range(4)))
            mine = (await _claim(source, "owner-a", limit=3)).jobs
            [theirs] = (await _claim(source, "owner-b", limit=3)).jobs
            kept = mine[0].id
            released = await source.release_owner("owner-a", keep=[kept])
            assert sorted(released) == sorted(j.id for j in mine[1:])
            states = {s.id: s for s in await source.job_states(ids)}
            for i in released:
                assert (states[i].status, states[i].owner, states[i].attempts) == ("pending", None, 0)
            assert (states[kept].status, states[kept].owner) == ("claimed", "owner-a")
            assert (states[theirs.id].status, states[theirs.id].owner) == ("claimed", "owner-b")
            assert await source.release_owner("owner-a") == [kept]
            assert await source.release_owner("nobody") == []

    # -- acks ----------------------------------------------------------------------------
    async def test_complete_deletes_the_row_or_keeps_it_done(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [job] = (await _claim(source)).jobs
            assert await source.ack([Ack(job)], default_max_attempts=20) == ["done"]
            states = await source.job_states([job_id])
            if self.keeps_completed:
                assert [(s.status, s.owner) for s in states] == [("done", None)]
                [counts] = await source.queue_counts()
                assert (counts.done, counts.pending, counts.claimed) == (1, 0, 0)
            else:
                assert states == []
            assert (await _claim(source)).jobs == []
            # Acking again may say "done" (a retried ack after a lost reply) but changes nothing.
            assert await source.ack([Ack(job, "late")], default_max_attempts=20) == ["lost"]
            assert await source.job_states([job_id]) == states

    async def test_ack_with_a_wrong_or_stale_claim_is_lost_and_changes_nothing(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [old] = (await _claim(source, "owner-a")).jobs
            await source.release([old])
            [new] = (await _claim(source, "owner-b")).jobs
            assert new.claim is not None
            before = await _state(source, job_id)
            forged = [
                old,  # released, then reclaimed by someone else
                Job(id=job_id, queue="default", payload="x", claim=Claim("owner-b", new.claim.token ^ 1)),
                Job(id=job_id, queue="default", payload="x", claim=Claim("owner-a", new.claim.token)),
                Job(id=job_id, queue="default", payload="x"),  # built by hand: no claim
            ]
            outcomes = await source.ack([Ack(j) for j in forged] + [Ack(old, "boom")], default_max_attempts=20)
            assert outcomes == ["lost"] * 5
            assert await _state(source, job_id) == before
            assert await source.ack([Ack(new)], default_max_attempts=20) == ["done"]

    async def test_fail_schedules_a_retry_with_its_error(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x", run_at=_past(1))
            enqueued = await _state(source, job_id)
            [job] = (await _claim(source)).jobs
            assert await source.ack([Ack(job, "boom", retry_in=60.0)], default_max_attempts=20) == ["retry"]
            state = await _state(source, job_id)
            assert (state.status, state.attempts, state.owner, state.last_error) == ("pending", 1, None, "boom")
            assert state.run_at - enqueued.run_at > timedelta(seconds=59)
            assert (await _claim(source)).jobs == []

    async def test_fail_with_retry_in_zero_is_claimable_again_with_attempts_counted(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [job] = (await _claim(source)).jobs
            assert await source.ack([Ack(job, "boom")], default_max_attempts=20) == ["retry"]
            [again] = (await _claim(source)).jobs
            assert (again.id, again.attempts) == (job_id, 2)

    async def test_fail_on_the_last_attempt_makes_the_job_dead(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x", max_attempts=2)
            [job] = (await _claim(source)).jobs
            assert await source.ack([Ack(job, "first")], default_max_attempts=20) == ["retry"]
            [job] = (await _claim(source)).jobs
            assert job.attempts == 2
            assert await source.ack([Ack(job, "second")], default_max_attempts=20) == ["dead"]
            state = await _state(source, job_id)
            assert (state.status, state.attempts, state.owner, state.last_error) == ("dead", 2, None, "second")
            assert (await _claim(source)).jobs == []

    async def test_default_max_attempts_applies_when_enqueued_without(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            plain = await source.enqueue("default", "plain")
            own = await source.enqueue("default", "own", max_attempts=3)
            jobs = {j.id: j for j in (await _claim(source, default_max_attempts=1)).jobs}
            assert (jobs[plain].max_attempts, jobs[own].max_attempts) == (1, 3)
            assert [s.max_attempts for s in await source.job_states([plain, own])] == [None, 3]
            acks = [Ack(jobs[plain], "e"), Ack(jobs[own], "e")]
            assert await source.ack(acks, default_max_attempts=1) == ["dead", "retry"]

    async def test_ack_returns_one_outcome_per_ack_in_order(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            await source.enqueue_many("default", ["a", "b", "c", "d"], max_attempts=1)
            a, b, c, d = (await _claim(source)).jobs
            await source.release([d])
            acks = [Ack(c, "x"), Ack(a), Ack(d), Ack(b, "y", retry_in=5.0)]
            assert await source.ack(acks, default_max_attempts=20) == ["dead", "done", "lost", "dead"]
            assert await source.ack([], default_max_attempts=20) == []

    # -- leases --------------------------------------------------------------------------
    async def test_expired_lease_is_rescued_by_another_owner(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [old] = (await _claim(source, "owner-a", lease=self.lease)).jobs
            result = await _claim_until(source, "owner-b", 30.0, lambda r: bool(r.jobs))
            [new] = result.jobs
            assert (new.id, new.attempts, result.dead) == (job_id, 2, 0)
            assert new.claim is not None and new.claim.owner == "owner-b"
            assert await source.ack([Ack(old)], default_max_attempts=20) == ["lost"]
            assert await source.release([old]) == []
            assert await source.release_owner("owner-a") == []
            assert (await _state(source, job_id)).owner == "owner-b"
            assert await source.ack([Ack(new)], default_max_attempts=20) == ["done"]

    async def test_rescue_without_attempts_left_makes_the_job_dead(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x", max_attempts=1)
            await _claim(source, "owner-a", lease=self.lease)
            result = await _claim_until(source, "owner-b", 30.0, lambda r: bool(r.jobs) or r.dead > 0)
            assert (result.jobs, result.dead) == ([], 1)
            state = await _state(source, job_id)
            assert (state.status, state.attempts, state.owner) == ("dead", 1, None)
            assert state.last_error

    async def test_heartbeat_extends_leases_of_held_jobs(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            worker = WorkerInfo("worker-a", "owner-a", "host", 1, ("default",), datetime.now(UTC))
            await source.enqueue("default", "x")
            held = (await _claim(source, "owner-a", lease=self.lease)).jobs
            deadline = trio.current_time() + 3 * self.lease
            while trio.current_time() < deadline:
                await source.heartbeat(worker, held, self.lease, {"depth": 1})
                assert (await _claim(source, "owner-b", lease=self.lease)).jobs == []
                await trio.sleep(self.lease / 4)
            await source.heartbeat(worker, held, None, {"depth": 1})  # stats only: no extension
            result = await _claim_until(source, "owner-b", 30.0, lambda r: bool(r.jobs))
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
            [dies] = (await _claim(source, queues=("a",))).jobs
            await source.ack([Ack(dies, "boom")], default_max_attempts=20)
            await source.enqueue("a", "held")
            await _claim(source, queues=("a",))
            await source.enqueue("a", "ready", run_at=_past(60))
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
            ids = await source.enqueue_many("default", [1, 2, 3], max_attempts=1)
            other = await source.enqueue("other", 4, max_attempts=1)
            jobs = (await _claim(source, queues=("default", "other"))).jobs
            await source.ack([Ack(j, "boom") for j in jobs], default_max_attempts=20)
            assert await source.requeue_dead("default", [ids[0], other]) == [ids[0]]
            first = await _state(source, ids[0])
            assert (first.status, first.attempts, first.last_error) == ("pending", 0, "boom")
            assert sorted(await source.requeue_dead("default")) == ids[1:]
            assert await source.requeue_dead("default") == []
            assert (await _state(source, other)).status == "dead"
            again = (await _claim(source)).jobs
            assert sorted(j.id for j in again) == ids and all(j.attempts == 1 for j in again)
