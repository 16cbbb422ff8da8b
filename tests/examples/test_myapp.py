"""Tests of the example application, written as a jobbuf user would write them: only the
public ``jobbuf`` and ``jobbuf.testing`` APIs, and the fixtures of jobbuf's pytest plugin.
The README's "Testing your handlers" examples are copies of these tests."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing
from myapp.handlers import Email, FakeEmailClient, FlakyGateway, charge_handler, welcome_email_handler

from jobbuf import BufferConfig, Job, MemoryJobSource, PostgresJobSource
from jobbuf.testing import assert_attempts, assert_dead, assert_queue_empty, drain, enqueue_jobs

ADA = {"email": "ada@example.com", "name": "Ada"}


# -- a handler is an async function of a Job: unit-test it with no database ---------------
async def test_welcome_email_is_sent() -> None:
    client = FakeEmailClient()
    send_welcome_email = welcome_email_handler(client)
    await send_welcome_email(Job(id=1, queue="emails", payload=ADA))
    assert client.sent == [Email("ada@example.com", "Welcome, Ada!", "Thanks for signing up.")]


async def test_bad_address_raises() -> None:
    send_welcome_email = welcome_email_handler(FakeEmailClient())
    with pytest.raises(ValueError, match="not an email address"):
        await send_welcome_email(Job(id=1, queue="emails", payload={"email": "nope", "name": "X"}))


# -- retries with a 30-minute backoff, in virtual time --------------------------------------
async def test_flaky_charge_is_retried_with_backoff(
    memory_source: MemoryJobSource, autojump_clock: trio.testing.MockClock
) -> None:
    gateway = FlakyGateway(failures=2)
    [job_id] = await enqueue_jobs(memory_source, [{"queue": "payments", "payload": {"order": 42, "cents": 1999}}])
    started = time.perf_counter()
    config = BufferConfig(queues=("payments",), retry_base=1800)  # 30 min, then 60 min (with jitter)
    result = await drain(memory_source, charge_handler(gateway), config=config)
    assert time.perf_counter() - started < 5  # real seconds: the backoff itself was virtual
    assert result.elapsed >= 900 + 1800  # virtual seconds: both backoffs were waited out
    assert (result.attempts(job_id), result.completed_ids, gateway.charged) == (3, [job_id], [(42, 1999)])


async def test_bad_address_ends_dead_after_max_attempts(
    memory_source: MemoryJobSource, autojump_clock: trio.testing.MockClock
) -> None:
    spec = {"queue": "emails", "payload": {"email": "nope", "name": "X"}, "max_attempts": 3}
    [job_id] = await enqueue_jobs(memory_source, [spec])
    result = await drain(memory_source, welcome_email_handler(FakeEmailClient()))
    assert result.dead_ids == [job_id] and len(result.failed) == 3
    await assert_dead(memory_source, job_id, error_contains="not an email address")
    await assert_attempts(memory_source, job_id, 3)


# -- the same handler against PostgreSQL (real time: never with autojump_clock) -------------
async def test_welcome_emails_on_postgres(postgres_source: PostgresJobSource) -> None:
    with trio.fail_after(30):
        client = FakeEmailClient()
        users = [{"queue": "emails", "payload": {"email": f"u{i}@example.com", "name": f"U{i}"}} for i in range(5)]
        ids = await enqueue_jobs(postgres_source, users)
        result = await drain(postgres_source, welcome_email_handler(client), concurrency=3)
        assert sorted(result.completed_ids) == ids
        assert sorted(e.to for e in client.sent) == [f"u{i}@example.com" for i in range(5)]
        await assert_queue_empty(postgres_source, "emails")
