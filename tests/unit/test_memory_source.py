"""What only ``MemoryJobSource`` does: virtual time, quarantine, faults, keep_completed.

The shared behaviour is in ``tests/contract`` (the source contract suite).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
import trio
import trio.testing

from jobbuf._errors import ConfigError
from jobbuf._memory import MemoryJobSource
from jobbuf._source import Ack, ClaimResult, JobSource, WorkerInfo


async def claim(source: MemoryJobSource, owner: str = "owner-a", **kw: object) -> ClaimResult:
    options: dict[str, object] = {"limit": 10, "lease": 30.0, "default_max_attempts": 20, **kw}
    return await source.claim(owner=owner, worker_id="w", queues=("default",), **options)  # type: ignore[arg-type]


def test_memory_source_satisfies_the_protocol() -> None:
    assert isinstance(MemoryJobSource(), JobSource)


async def test_job_an_hour_ahead_is_claimable_after_an_hour_of_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = time.monotonic()
    with trio.fail_after(7200):
        source = MemoryJobSource()
        job_id = await source.enqueue("default", "later", run_at=source.now() + timedelta(hours=1))
        await trio.sleep(3599)
        assert (await claim(source)).jobs == []
        await trio.sleep(1)
        [job] = (await claim(source)).jobs
        assert job.id == job_id
        assert job.run_at == job.created_at + timedelta(hours=1)  # type: ignore[operator]
    assert time.monotonic() - started < 1.0


async def test_an_ack_batch_that_overflows_the_clock_changes_nothing() -> None:
    source = MemoryJobSource()
    await source.enqueue_many("default", [1, 2])
    first, second = (await claim(source)).jobs
    with trio.fail_after(10), pytest.raises(OverflowError):
        await source.ack([Ack(first), Ack(second, "boom", retry_in=1e12)], default_max_attempts=20)
    assert [s.status for s in await source.job_states([first.id, second.id])] == ["claimed", "claimed"]


async def test_one_hour_backoff_and_lease_expiry_pass_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    started = time.monotonic()
    with trio.fail_after(100_000):
        source = MemoryJobSource()
        await source.enqueue("default", "x")
        [job] = (await claim(source)).jobs
        assert await source.ack([Ack(job, "boom", retry_in=3600.0)], default_max_attempts=20) == ["retry"]
        await trio.sleep(3599.5)
        assert (await claim(source)).jobs == []
        await trio.sleep(1)
        [job] = (await claim(source, lease=600.0)).jobs
        assert job.attempts == 2
        await trio.sleep(601)
        [rescued] = (await claim(source, "owner-b")).jobs
        assert (rescued.id, rescued.attempts) == (job.id, 3)
    assert time.monotonic() - started < 1.0


async def test_now_is_aware_utc_and_follows_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    source = MemoryJobSource()
    before = source.now()
    assert before.tzinfo is UTC
    assert abs((before - datetime.now(UTC)).total_seconds()) < 5
    await trio.sleep(86400)
    assert source.now() - before == timedelta(days=1)


async def test_undecodable_payload_is_quarantined_dead_at_claim() -> None:
    with trio.fail_after(10):
        source = MemoryJobSource()
        bad = await source.enqueue_raw("default", "{not json", priority=9)
        good = await source.enqueue("default", {"ok": True})
        result = await claim(source)
        assert [j.id for j in result.jobs] == [good]
        assert (result.quarantined, result.dead) == (1, 0)
        [state] = await source.job_states([bad])
        assert (state.status, state.owner, state.attempts) == ("dead", None, 1)
        assert state.last_error is not None and "not JSON" in state.last_error
        assert (await claim(source)).jobs == []
        assert await source.requeue_dead("default") == [bad]  # an operator can still requeue it


async def test_claimed_payload_is_a_copy_of_the_enqueued_one() -> None:
    source = MemoryJobSource()
    payload = {"items": [1]}
    await source.enqueue("default", payload)
    payload["items"].append(2)
    [job] = (await claim(source)).jobs
    assert job.payload == {"items": [1]}


async def test_fail_next_raises_before_changing_anything_then_recovers() -> None:
    with trio.fail_after(10):
        source = MemoryJobSource()
        source.fail_next("enqueue", ConnectionError("down"), times=2)
        for _ in range(2):
            with pytest.raises(ConnectionError, match="down"):
                await source.enqueue("default", "x")
        assert await source.job_states() == []
        job_id = await source.enqueue("default", "x")
        source.fail_next("claim", OSError("reset"))
        with pytest.raises(OSError, match="reset"):
            await claim(source)
        [state] = await source.job_states([job_id])
        assert (state.status, state.attempts) == ("pending", 0)
        assert [j.id for j in (await claim(source)).jobs] == [job_id]


async def test_fail_next_after_applies_the_change_then_raises() -> None:
    # A claim that committed but whose reply was lost: only release_owner can recover it.
    with trio.fail_after(10):
        source = MemoryJobSource()
        ids = await source.enqueue_many("default", [1, 2])
        source.fail_next("claim", OSError("reply lost"), after=True)
        with pytest.raises(OSError):
            await claim(source)
        assert [s.status for s in await source.job_states(ids)] == ["claimed", "claimed"]
        assert await source.release_owner("owner-a") == ids


def test_fail_next_rejects_unknown_methods() -> None:
    source = MemoryJobSource()
    with pytest.raises(ValueError, match="claim_jobs"):
        source.fail_next("claim_jobs", OSError())
    with pytest.raises(ValueError, match="times"):
        source.fail_next("claim", OSError(), times=0)


async def test_cancelled_call_changes_nothing() -> None:
    source = MemoryJobSource()
    with trio.CancelScope() as scope:
        scope.cancel()
        await source.enqueue_many("default", [1, 2, 3])
    assert scope.cancelled_caught
    assert await source.job_states() == []


async def test_keep_completed_marks_done_and_keeps_the_worker_id() -> None:
    source = MemoryJobSource(keep_completed=True)
    job_id = await source.enqueue("default", "x")
    [job] = (await claim(source)).jobs
    assert await source.ack([Ack(job)], default_max_attempts=20) == ["done"]
    [state] = await source.job_states([job_id])
    assert (state.status, state.owner, state.worker_id) == ("done", None, "w")
    assert (await claim(source)).jobs == []
    assert await source.requeue_dead("default") == []


async def test_naive_or_non_datetime_run_at_is_config_error() -> None:
    source = MemoryJobSource()
    with pytest.raises(ConfigError, match="timezone-aware"):
        await source.enqueue("default", 1, run_at=datetime(2030, 1, 1))
    with pytest.raises(ConfigError, match="run_at"):
        await source.enqueue("default", 1, run_at="2030-01-01")  # type: ignore[arg-type]
    assert await source.job_states() == []


async def test_aware_run_at_in_any_zone_is_stored_as_utc() -> None:
    source = MemoryJobSource()
    due = datetime(2020, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    job_id = await source.enqueue("default", 1, run_at=due)
    [state] = await source.job_states([job_id])
    assert state.run_at == due and state.run_at.tzinfo is UTC


@pytest.mark.parametrize("bad", [{"priority": True}, {"priority": 1.5}, {"priority": 2**31}, {"max_attempts": 0}])
async def test_bad_priority_or_max_attempts_is_config_error_naming_the_value(bad: dict[str, object]) -> None:
    source = MemoryJobSource()
    [(name, value)] = bad.items()
    with pytest.raises(ConfigError, match=f"{name}={value!r}"):
        await source.enqueue("default", 1, **bad)  # type: ignore[arg-type]


async def test_infinite_payload_is_type_error_and_writes_nothing() -> None:
    source = MemoryJobSource()
    with pytest.raises(TypeError, match="JSON"):
        await source.enqueue_many("default", [1, math.inf])
    assert await source.job_states() == []


async def test_raising_listener_is_logged_and_enqueue_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    source = MemoryJobSource()
    calls: list[int] = []

    def broken() -> None:
        raise RuntimeError("listener bug")

    source.listen(["default"], broken)
    source.listen(["default"], lambda: calls.append(1))
    with caplog.at_level(logging.ERROR, logger="jobbuf.memory"):
        job_id = await source.enqueue("default", "x")
    assert job_id and calls == [1]
    assert "listen() callback" in caplog.text


async def test_completion_of_a_vanished_row_is_done_but_a_stale_failure_is_lost() -> None:
    # Mirrors PostgresJobSource: a retried completion after a lost reply is not a lost lease.
    source = MemoryJobSource()
    await source.enqueue("default", "x")
    [job] = (await claim(source)).jobs
    source.fail_next("ack", OSError("reply lost"), after=True)
    with pytest.raises(OSError):
        await source.ack([Ack(job)], default_max_attempts=20)
    assert await source.ack([Ack(job), Ack(job, "late")], default_max_attempts=20) == ["done", "lost"]
    assert await source.job_states() == []


async def test_releases_notify_once_and_failures_not_at_all_like_postgres() -> None:
    source = MemoryJobSource()
    calls: list[int] = []
    await source.enqueue_many("default", ["x", "y"])
    source.listen(["default"], lambda: calls.append(1))
    jobs = (await claim(source)).jobs
    await source.release(jobs)
    assert calls == [1]  # one wake-up per release, not per row
    jobs = (await claim(source)).jobs
    await source.release_owner(jobs[0].claim.owner if jobs[0].claim else "")
    assert calls == [1, 1]
    [job, _] = (await claim(source)).jobs
    await source.ack([Ack(job, "boom")], default_max_attempts=20)
    await source.release([])
    assert calls == [1, 1]


async def test_heartbeat_registers_the_worker_and_deregister_removes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = MemoryJobSource()
    info = WorkerInfo("worker-a", "inst-1", "host", 42, ("default",), source.now(), {"capacity": 5})
    await source.heartbeat(info, [], None, {"depth": 0})
    await trio.sleep(5)
    changed = WorkerInfo("worker-a", "inst-1", "other-host", 43, ("default",), source.now())
    await source.heartbeat(changed, [], 10.0, {"depth": 3})
    [worker] = source.workers()
    assert (worker.info, worker.stats, worker.heartbeat_at) == (info, {"depth": 3}, source.now())
    with pytest.raises(TypeError):
        await source.heartbeat(info, [], None, {"bad": object()})
    await source.deregister("inst-1")
    assert source.workers() == []
