"""The buffer against real PostgreSQL (issue 2's acceptance points)."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.lowlevel

import jobbuf._open_postgres
from jobbuf import BufferConfig, ClaimResult, Job, JobBuffer, PostgresJobSource, open_job_buffer, run_workers
from jobbuf._aio import ImmediateCall, run_immediate_callbacks
from pg_helpers import sql, statuses, wait_until

Pg = tuple[PostgresJobSource, str]


async def test_two_buffers_claim_disjoint_batches(pg: Pg) -> None:
    source, _ = pg
    with trio.fail_after(20):
        await source.enqueue_many("default", list(range(60)))
        cfg = BufferConfig(capacity=25, low_water=1, poll_interval=5)
        async with open_job_buffer(source, "a", cfg) as a, open_job_buffer(source, "b", cfg) as b:
            await wait_until(lambda: a.depth == 25 and b.depth == 25)
            ids_a = {(await a.take_job(0)).id for _ in range(25)}  # type: ignore[union-attr]
            ids_b = {(await b.take_job(0)).id for _ in range(25)}  # type: ignore[union-attr]
            assert len(ids_a) == 25 and len(ids_b) == 25
            assert not ids_a & ids_b
            rows = await source.job_states(sorted(ids_a | ids_b))
            assert {r.owner for r in rows if r.id in ids_a} == {a.instance}
            assert {r.owner for r in rows if r.id in ids_b} == {b.instance}


async def test_claimed_jobs_carry_their_rows_timestamps_shared_or_not(pg: Pg) -> None:
    # The claim sends a timestamp repeated from the row before (or from the row's own
    # run_at) as NULL; each job must still carry exactly its row's values, past a row
    # that is skipped (dead on rescue) too.
    source, dsn = pg
    now = datetime.now(UTC)
    with trio.fail_after(20):
        # e1 and e2 share a run_at; e1 is claimed with a lease that expires, and its last
        # attempt is used, so the final claim makes it dead and skips it.
        e1, e2 = await source.enqueue_many("default", ["e1", "e2"], run_at=now - timedelta(seconds=30), max_attempts=1)
        [first] = (await source.claim(owner="gone", worker_id="w", queues=("default",), limit=1, lease=0.01,
                                      default_max_attempts=20)).jobs  # fmt: skip
        assert first.id == e1
        await trio.sleep(0.05)
        c1, c2 = await source.enqueue_many("default", ["c1", "c2"], run_at=now - timedelta(seconds=20))
        b = await source.enqueue("default", "b", run_at=now - timedelta(seconds=10))
        d = await source.enqueue("default", "d", run_at=now - timedelta(seconds=10))  # b's run_at, own created_at
        a = await source.enqueue_many("default", ["a1", "a2", "a3"])  # run_at = created_at, shared
        result = await source.claim(owner="o", worker_id="w", queues=("default",), limit=20, default_max_attempts=20,
                                    lease=30)  # fmt: skip
        assert result.dead == 1
        assert [j.id for j in result.jobs] == [e2, c1, c2, b, d, *a]
        rows = await sql(dsn, f'SELECT id, run_at, created_at FROM "{source.schema}".jobs')
        stored = {r["id"]: (r["run_at"], r["created_at"]) for r in rows}
        assert {j.id: (j.run_at, j.created_at) for j in result.jobs} == {j.id: stored[j.id] for j in result.jobs}
        assert len({stored[i][1] for i in (b, d)}) == 2 and stored[a[0]][0] == stored[a[0]][1]


async def test_refill_below_low_water_never_exceeds_capacity(pg: Pg) -> None:
    source, _ = pg
    with trio.fail_after(20):
        await source.enqueue_many("default", list(range(100)))
        cfg = BufferConfig(capacity=10, low_water=4, batch_size=5, poll_interval=30)
        async with open_job_buffer(source, "w", cfg) as buf:
            await wait_until(lambda: buf.depth >= 4)
            await trio.sleep(0.3)
            first = buf.depth
            assert 4 <= first <= 10  # claims stop once depth reaches low_water
            depths = []
            for _ in range(40):
                job = await buf.take_job(5)
                assert job is not None
                await buf.complete(job)
                depths.append(buf.depth)
                await trio.sleep(0.01)
            assert max(depths) <= 10
            assert buf.stats().claimed >= 40  # refilled well past the first batches
            assert buf.stats().claimed <= 40 + 10


async def test_pipelined_claims_of_two_buffers_drain_every_job_exactly_once(pg: Pg) -> None:
    source, dsn = pg
    with trio.fail_after(60):
        ids = await source.enqueue_many("default", list(range(3000)))
        claim, in_flight, most = source.claim, 0, 0

        async def observed_claim(**kwargs: Any) -> ClaimResult:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            try:
                return await claim(**kwargs)
            finally:
                in_flight -= 1

        source.claim = observed_claim  # type: ignore[method-assign]
        handled: list[int] = []

        async def handler(job: Job) -> None:
            handled.append(job.id)
            await trio.lowlevel.checkpoint()

        cfg = BufferConfig(capacity=400, low_water=300, batch_size=100, poll_interval=5)
        async with (
            open_job_buffer(source, "a", cfg) as a,
            open_job_buffer(source, "b", cfg) as b,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(run_workers, a, handler)
            nursery.start_soon(run_workers, b, handler)
            await wait_until(lambda: a.stats().completed + b.stats().completed == len(ids), timeout=50)
            nursery.cancel_scope.cancel()
        assert sorted(handled) == ids  # each exactly once
        assert most >= 3  # claims did overlap
        assert await sql(dsn, f'SELECT id FROM "{source.schema}".jobs') == []


async def taken_after_enqueue(source: PostgresJobSource, buf: JobBuffer) -> float:
    """Seconds from an enqueue to ``take_job`` returning it, with the taker already waiting
    (so the empty take's own wake-up of the poller has come and gone: only the NOTIFY, or
    the next poll, can bring the job)."""
    taken: list[Job | None] = []
    async with trio.open_nursery() as nursery:

        async def taker() -> None:
            taken.append(await buf.take_job(10))

        nursery.start_soon(taker)
        await trio.sleep(0.3)
        start = time.monotonic()
        await source.enqueue("default", {"x": 1})
    assert taken[0] is not None
    await buf.complete(taken[0])
    return time.monotonic() - start


async def test_enqueue_wakes_idle_buffer_before_poll_interval(pg: Pg) -> None:
    source, _ = pg
    with trio.fail_after(40):
        cfg = BufferConfig(poll_interval=30)
        async with open_job_buffer(source, "w", cfg) as buf:
            for _ in range(3):
                assert await taken_after_enqueue(source, buf) < 2.0  # NOTIFY, not the 30 s poll


async def test_the_sources_loop_runs_wake_ups_where_they_happen(pg: Pg, monkeypatch: pytest.MonkeyPatch) -> None:
    # open_postgres_source sets its trio-asyncio loop up so that run_aio's wake-ups and the
    # listener's notifications skip a round through the loop's queue (_aio's docstring);
    # queries and NOTIFY wake-ups work on it.
    source, dsn = pg
    loops: list[Any] = []

    def spy(loop: Any) -> None:
        loops.append(loop)
        run_immediate_callbacks(loop)

    monkeypatch.setattr(jobbuf._open_postgres, "run_immediate_callbacks", spy)
    with trio.fail_after(40):
        async with jobbuf.open_postgres_source(dsn, schema=source.schema) as other:
            assert len(loops) == 1
            seen: list[int] = []
            loops[0].call_soon(ImmediateCall(seen.append), 1)
            assert seen == [1]
            async with open_job_buffer(other, "w", BufferConfig(poll_interval=30)) as buf:
                assert await taken_after_enqueue(other, buf) < 2.0  # woken by the NOTIFY, not the 30 s poll
                # Nor do queries, their results and notifications go through the loop's
                # queue: not asyncpg's done callback on a query's future, and not the
                # reader task's wait for an empty queue after each read (loop.synchronize).
                queued: list[Any] = []
                put = loops[0]._queue_handle
                monkeypatch.setattr(loops[0], "_queue_handle", lambda h: queued.append(h) or put(h))
                await other.queue_counts()
                assert await taken_after_enqueue(other, buf) < 2.0
                plain = [h for h in queued if not isinstance(h, asyncio.TimerHandle)]
                # Several reads (each query's result, the notification) and as many
                # synchronizes. A due timer can hold the loop's task for a moment: then
                # one of them waits for it.
                assert "_on_waiter_completed" not in repr(plain) and len(plain) <= 1, plain


async def test_jobs_arrive_by_polling_when_listener_is_killed(pg: Pg) -> None:
    source, dsn = pg
    with trio.fail_after(30):
        source.listener._health_interval = 60  # keep it down: only the poll can deliver
        cfg = BufferConfig(poll_interval=0.5)
        async with open_job_buffer(source, "w", cfg) as buf:
            await wait_until(lambda: source.listener.connected)
            pid = source.listener.backend_pid
            await sql(dsn, "SELECT pg_terminate_backend($1)", pid)
            await wait_until(lambda: source.listener.backend_pid != pid or not source.listener.connected)
            await source.enqueue("default", {"x": 1})
            job = await buf.take_job(5)
            assert job is not None and job.payload == {"x": 1}
            await buf.complete(job)
            # and the listener comes back by itself
            await wait_until(lambda: source.listener.connected and source.listener.backend_pid != pid)
            assert source.listener.reconnects >= 1


async def test_take_job_returns_none_after_timeout(pg: Pg) -> None:
    source, _ = pg
    with trio.fail_after(10):
        async with open_job_buffer(source, "w") as buf:
            start = time.monotonic()
            assert await buf.take_job(0.3) is None
            assert time.monotonic() - start >= 0.3
            assert await buf.take_job(0) is None


async def test_ttl_discarded_job_is_pending_again_with_attempts_unchanged(pg: Pg) -> None:
    source, dsn = pg
    with trio.fail_after(20):
        (job_id,) = await source.enqueue_many("default", [{"x": 1}])
        cfg = BufferConfig(ttl=0.3, poll_interval=30, capacity=1, low_water=1)
        async with open_job_buffer(source, "w", cfg) as buf:
            await wait_until(lambda: buf.stats().claimed == 1)
            # the poller sweeps it after the TTL even though nobody takes
            await wait_until(lambda: buf.stats().discarded >= 1 and buf.stats().released >= 1)
            assert buf.stats().taken == 0
            # Released with the attempt given back: it is claimable again and every
            # re-claim counts one attempt, never more.
            status, attempts, _ = (await statuses(dsn, source.schema))[job_id]
            assert (status, attempts) in {("pending", 0), ("claimed", 1)}
            await buf.stop()
            assert (await statuses(dsn, source.schema))[job_id] == ("pending", 0, None)


async def test_stop_returns_undispatched_jobs_and_releases_them(pg: Pg) -> None:
    source, dsn = pg
    with trio.fail_after(20):
        ids = await source.enqueue_many("default", list(range(8)))
        async with open_job_buffer(source, "w", BufferConfig(capacity=10, poll_interval=30)) as buf:
            await wait_until(lambda: buf.depth == 8)
            taken = await buf.take_job(0)
            assert taken is not None
            jobs = await buf.stop()
            assert sorted(j.id for j in jobs) == sorted(set(ids) - {taken.id})
            rows = await statuses(dsn, source.schema)
            assert all(rows[j.id][:2] == ("pending", 0) for j in jobs)
            assert rows[taken.id][0] == "claimed"
            await buf.complete(taken)  # acks of taken jobs still work after stop
            assert await buf.stop() == []  # idempotent
            assert not buf.running


async def test_stop_without_release_leaves_jobs_claimed(pg: Pg) -> None:
    source, dsn = pg
    with trio.fail_after(20):
        await source.enqueue_many("default", list(range(5)))
        async with open_job_buffer(source, "w", BufferConfig(poll_interval=30)) as buf:
            await wait_until(lambda: buf.depth == 5)
            jobs = await buf.stop(release=False)
            assert len(jobs) == 5
            rows = await statuses(dsn, source.schema)
            assert all(rows[j.id] == ("claimed", 1, buf.instance) for j in jobs)
            # handed to another buffer, they can still be completed there
            async with open_job_buffer(source, "other", BufferConfig(poll_interval=30)) as other:
                assert other.offer_jobs(jobs) == 5
                for _ in range(5):
                    job = await other.take_job(1)
                    assert job is not None
                    await other.complete(job)
        assert await statuses(dsn, source.schema) == {}


async def test_leaving_the_context_releases_everything(pg: Pg) -> None:
    source, dsn = pg
    with trio.fail_after(20):
        ids = await source.enqueue_many("default", list(range(30)))
        async with open_job_buffer(source, "w", BufferConfig(capacity=20, poll_interval=30)) as buf:
            await wait_until(lambda: buf.depth == 20)
            taken = [await buf.take_job(0) for _ in range(3)]  # in flight, never acked
            assert all(taken)
            instance = buf.instance
        rows = await statuses(dsn, source.schema)
        assert sorted(rows) == sorted(ids)
        assert all(r == ("pending", 0, None) for r in rows.values()), rows
        assert not await sql(dsn, f'SELECT 1 FROM "{source.schema}".workers WHERE instance = $1', instance)
        assert buf.stats().released == 20


@pytest.mark.parametrize("seed", range(3))
async def test_cancelled_take_job_never_loses_a_job(pg: Pg, seed: int) -> None:
    # Cancel each take after a random number of scheduling rounds (0-4), so the cancel
    # lands at every point of take_job in turn: before the pop, while parked, and right
    # after a pop. A take cancelled after popping would leave its job in flight, unacked.
    source, dsn = pg
    rng = random.Random(seed)
    with trio.fail_after(60):
        ids = set(await source.enqueue_many("default", list(range(120))))
        got: list[int] = []
        taken: list[Job] = []
        cfg = BufferConfig(capacity=7, low_water=3, poll_interval=0.05)
        async with open_job_buffer(source, "w", cfg) as buf:
            for _ in range(150):
                async with trio.open_nursery() as nursery:
                    scope = trio.CancelScope()

                    async def take(scope: trio.CancelScope = scope) -> None:
                        with scope:
                            job = await buf.take_job()
                            assert job is not None
                            taken.append(job)
                            got.append(job.id)

                    nursery.start_soon(take)
                    for _ in range(rng.randrange(5)):
                        await trio.lowlevel.checkpoint()
                    scope.cancel()
                if len(got) > buf.stats().completed:
                    await buf.complete(taken[-1])
            stats = buf.stats()
            assert stats.in_flight == 0 and stats.taken == len(got)  # nothing popped and dropped
        rows = await statuses(dsn, source.schema)
        assert len(got) == len(set(got))  # never handed out twice
        assert set(got).isdisjoint(rows)  # completed rows are gone
        assert set(rows) == ids - set(got)  # everything else is back, untouched
        assert all(r == ("pending", 0, None) for r in rows.values())


async def test_second_start_raises(pg: Pg) -> None:
    from jobbuf import BufferAlreadyRunningError

    source, _ = pg
    with trio.fail_after(10):
        buf = JobBuffer(source, "w")
        async with trio.open_nursery() as nursery:
            await nursery.start(buf.run)
            assert buf.running
            with pytest.raises(BufferAlreadyRunningError) as info:
                await nursery.start(buf.run)
            assert isinstance(info.value, RuntimeError)
            nursery.cancel_scope.cancel()


async def test_a_fail_whose_reply_was_lost_is_not_reported_as_a_lost_lease(pg: Pg) -> None:
    # Regression: the retry matched no claim (the first try had applied the failure), so
    # fail() raised LeaseLostError, "ack not applied", and stats counted a lost lease.
    source, _ = pg
    with trio.fail_after(30):
        [job_id] = await source.enqueue_many("default", [1])
        async with open_job_buffer(source, "w", BufferConfig(poll_interval=0.1)) as buf:
            job = await buf.take_job(timeout=5)
            assert job is not None and job.id == job_id
            durable, lose = source._durable, [True]
            real_run = durable.run

            async def reply_lost(op: Any, *, in_task: bool = False) -> Any:
                result = await real_run(op, in_task=in_task)
                if lose.pop() if lose else False:  # committed; the reply never arrives
                    raise ConnectionResetError("reply lost")
                return result

            durable.run = reply_lost  # type: ignore[method-assign]
            await buf.fail(job, "boom", retry_in=3600)
            assert not lose  # the first try's reply was lost, and the ack retried
            assert (buf.stats().failed, buf.stats().lease_lost) == (1, 0)
        [row] = await source.job_states([job_id])
        assert (row.status, row.attempts, row.last_error) == ("pending", 1, "boom")


async def test_a_failed_row_keeps_its_claims_token_until_requeued(pg: Pg) -> None:
    # What lets a retried failure recognise its first try (Statements.failed); a requeue
    # forgets it, so nothing from before can match the requeued job.
    source, dsn = pg
    with trio.fail_after(20):
        [job_id] = await source.enqueue_many("default", [1], max_attempts=1)
        async with open_job_buffer(source, "w") as buf:
            job = await buf.take_job(timeout=5)
            assert job is not None and job.claim is not None
            await buf.fail(job, "boom")
        token = f'SELECT status, claim_token FROM "{source.schema}".jobs WHERE id = $1'
        assert [tuple(r) for r in await sql(dsn, token, job_id)] == [("dead", job.claim.token)]
        assert await source.requeue_dead("default") == [job_id]
        assert [tuple(r) for r in await sql(dsn, token, job_id)] == [("pending", None)]
