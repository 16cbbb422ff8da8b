"""``drain``, ``enqueue_jobs`` and the assertions, on MemoryJobSource in virtual time."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from jobbuf import BufferConfig, ConfigError, Job, MemoryJobSource
from jobbuf.testing import (
    DrainTimeoutError,
    assert_attempts,
    assert_completed,
    assert_dead,
    assert_queue_empty,
    drain,
    enqueue_jobs,
)

Clock = trio.testing.MockClock


async def ok(job: Job) -> None:
    await trio.sleep(1)


async def hang(job: Job) -> None:
    await trio.sleep_forever()


async def boom(job: Job) -> None:
    raise RuntimeError(f"boom {job.payload}")


async def test_drain_completes_everything_and_reports_stats(autojump_clock: Clock) -> None:
    source = MemoryJobSource()
    ids = await source.enqueue_many("default", list(range(30)))
    result = await drain(source, ok, concurrency=4)
    assert sorted(result.completed_ids) == ids and result.failed == () and result.dead == ()
    stats = result.stats
    assert (stats.completed, stats.in_flight, stats.depth, stats.running) == (30, 0, 0, False)
    assert result.elapsed >= 30 / 4
    assert await source.job_states() == []
    assert source.workers() == []  # the buffer deregistered


async def test_drain_with_no_config_serves_every_queue_with_work(autojump_clock: Clock) -> None:
    source = MemoryJobSource()
    ids = await enqueue_jobs(source, [{"queue": "a", "payload": 1}, {"queue": "b", "payload": 2}, {"payload": 3}])
    result = await drain(source, ok)
    assert sorted(result.completed_ids) == ids and result.completed_payloads.count(3) == 1


async def test_drain_waits_for_scheduled_jobs_and_follow_ups(autojump_clock: Clock) -> None:
    source = MemoryJobSource()
    await enqueue_jobs(source, [{"payload": 0, "run_in": 3600}])

    async def chain(job: Job) -> None:  # each job enqueues the next, two hours later
        if job.payload < 3:
            await enqueue_jobs(source, [{"payload": job.payload + 1, "run_in": 7200}])

    result = await drain(source, chain)
    assert result.completed_payloads == [0, 1, 2, 3]
    assert result.elapsed >= 3600 + 3 * 7200


async def test_retries_then_dead_with_errors_recorded(autojump_clock: Clock) -> None:
    source = MemoryJobSource()
    [job_id] = await enqueue_jobs(source, [{"payload": "x", "max_attempts": 4}])
    result = await drain(source, boom, config=BufferConfig(retry_base=60))
    assert result.attempts(job_id) == 4 and [f.job.attempts for f in result.failed] == [1, 2, 3, 4]
    assert [str(e) for e in result.errors(job_id)] == ["boom x"] * 4
    [dead] = result.dead
    assert dead.job.id == job_id and dead.error is not None and "RuntimeError: boom x" in dead.error
    assert result.stats.dead == 1 and result.elapsed >= 30 + 60 + 120


async def test_job_timeout_fails_the_attempt(autojump_clock: Clock) -> None:
    source = MemoryJobSource()
    [job_id] = await enqueue_jobs(source, [{"payload": 1, "max_attempts": 1}])
    result = await drain(source, hang, job_timeout=5)
    [failure] = result.failed
    assert isinstance(failure.error, TimeoutError) and "5s" in str(failure.error)
    await assert_dead(source, job_id, error_contains="timed out after 5s")


async def test_timeout_names_what_was_left_and_releases_it(autojump_clock: Clock) -> None:
    source = MemoryJobSource()
    await enqueue_jobs(source, [{"payload": "late", "run_at": datetime.now(UTC) + timedelta(days=3650)}])
    with pytest.raises(DrainTimeoutError, match=r"(?s)1 scheduled.*due in") as info:
        await drain(source, ok, timeout=0.3)
    assert "queue 'default'" in str(info.value)
    stuck = await enqueue_jobs(source, [{"queue": "hang", "payload": 1}])
    with pytest.raises(DrainTimeoutError, match=rf"handlers running for job ids \[{stuck[0]}\]"):
        await drain(source, hang, config=BufferConfig(queues=("hang",)), timeout=0.3)
    [state] = await source.job_states(stuck)
    assert (state.status, state.attempts, state.owner) == ("pending", 0, None)  # released, not stranded


async def test_drain_rejects_bad_arguments() -> None:
    source = MemoryJobSource()
    for kwargs in ({"timeout": 0}, {"timeout": True}, {"settle": -1}, {"job_timeout": 0}):
        with pytest.raises(ConfigError, match=next(iter(kwargs))):
            await drain(source, ok, **kwargs)  # type: ignore[arg-type]


async def test_enqueue_jobs_validates_every_spec_before_writing() -> None:
    source = MemoryJobSource()
    with pytest.raises(TypeError, match=r"jobs\[1\] has unknown key\(s\) 'priorty' \(did you mean 'priority'\?\)"):
        await enqueue_jobs(source, [{"payload": 1}, {"payload": 2, "priorty": 5}])
    with pytest.raises(TypeError, match=r"jobs\[0\] has no 'payload'"):
        await enqueue_jobs(source, [{"queue": "a"}])
    with pytest.raises(TypeError, match="both 'run_at' and 'run_in'"):
        await enqueue_jobs(source, [{"payload": 1, "run_in": 1, "run_at": datetime.now(UTC)}])
    with pytest.raises(TypeError, match="JSON"):
        await enqueue_jobs(source, [{"payload": 1}, {"payload": {1, 2}}])
    with pytest.raises(ConfigError, match="max_attempts"):
        await enqueue_jobs(source, [{"payload": 1}, {"payload": 2, "max_attempts": 0}])
    for run_in in (math.inf, math.nan, 1e12):  # an OverflowError or ValueError before
        with pytest.raises(ConfigError, match=r"\['run_in'\]=.* is invalid: pass at most 100 years"):
            await enqueue_jobs(source, [{"payload": 1}, {"payload": 2, "run_in": run_in}])
    assert await source.job_states() == []


async def test_enqueue_jobs_applies_options_in_order(autojump_clock: Clock) -> None:
    source = MemoryJobSource()
    specs = [{"payload": "a", "priority": 2, "max_attempts": 3}, {"queue": "q", "payload": "b", "run_in": 60}]
    a, b = await enqueue_jobs(source, specs)
    sa, sb = await source.job_states([a, b])
    assert (sa.queue, sa.priority, sa.max_attempts, sb.queue, sb.priority) == ("default", 2, 3, "q", 0)
    assert timedelta(seconds=59) < sb.run_at - source.now() <= timedelta(seconds=60)


async def test_assertion_messages_show_the_row(autojump_clock: Clock) -> None:
    source = MemoryJobSource()
    [job_id] = await enqueue_jobs(source, [{"queue": "q", "payload": 1, "priority": 7}])
    with pytest.raises(AssertionError, match=rf"(?s)queue 'q' is not empty: 1 pending.*job {job_id} .*priority=7"):
        await assert_queue_empty(source, "q")
    with pytest.raises(AssertionError, match=rf"(?s)job {job_id} is 'pending', expected 'dead'.*status='pending'"):
        await assert_dead(source, job_id)
    with pytest.raises(AssertionError, match=r"(?s)attempts=0, expected 2.*last_error=None"):
        await assert_attempts(source, job_id, 2)
    with pytest.raises(AssertionError, match="expected completed"):
        await assert_completed(source, job_id)
    await assert_queue_empty(source, "other")


async def test_assertions_pass_and_explain_deleted_rows(autojump_clock: Clock) -> None:
    source = MemoryJobSource()
    done, dead = await enqueue_jobs(source, [{"payload": "ok"}, {"payload": "bad", "max_attempts": 1}])

    async def handler(job: Job) -> None:
        if job.payload == "bad":
            raise ValueError("bad payload")

    await drain(source, handler)
    assert await assert_completed(source, done) is None
    state = await assert_dead(source, dead, error_contains="ValueError: bad payload")
    assert state.attempts == 1
    with pytest.raises(AssertionError, match="does not contain 'KeyError'"):
        await assert_dead(source, dead, error_contains="KeyError")
    with pytest.raises(AssertionError, match="keep_completed=True"):
        await assert_attempts(source, done, 1)
    await assert_queue_empty(source, "default", allow_dead=True)
    with pytest.raises(AssertionError, match="1 dead"):
        await assert_queue_empty(source, "default")


async def test_keep_completed_lets_attempts_be_checked(autojump_clock: Clock) -> None:
    source = MemoryJobSource(keep_completed=True)
    [job_id] = await enqueue_jobs(source, [{"payload": 1}])
    await drain(source, ok)
    state = await assert_completed(source, job_id)
    assert state is not None and state.status == "done"
    await assert_attempts(source, job_id, 1)
    await assert_queue_empty(source, "default")
