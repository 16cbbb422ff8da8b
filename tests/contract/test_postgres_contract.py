"""The source contract, run against :class:`PostgresJobSource` on real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from jobbuf import Ack, PostgresJobSource, open_postgres_source
from jobbuf.testing import SourceContract
from jobbuf.testing.plugin import drop_schema, fresh_schema_name


class TestPostgresSourceContract(SourceContract):
    @pytest.fixture
    def source(self, postgres_source: PostgresJobSource) -> PostgresJobSource:
        return postgres_source


class TestPostgresSourceKeepingCompletedContract(SourceContract):
    """``keep_completed=True``: completed rows stay, with status ``done``."""

    keeps_completed = True

    @pytest.fixture
    async def source(self, jobbuf_dsn: str) -> AsyncIterator[PostgresJobSource]:
        schema = fresh_schema_name()
        try:
            async with open_postgres_source(jobbuf_dsn, schema=schema, migrate=True, keep_completed=True) as src:
                yield src
        finally:
            await trio.to_thread.run_sync(drop_schema, jobbuf_dsn, schema)


async def test_two_acks_of_one_job_in_a_batch_apply_in_order(postgres_source: PostgresJobSource) -> None:
    source = postgres_source
    with trio.fail_after(10):
        await source.enqueue("default", 1)
        (job,) = (
            await source.claim(owner="o", worker_id="w", queues=("default",), limit=1, lease=30, default_max_attempts=5)
        ).jobs
        outcomes = await source.ack([Ack(job, error="boom", retry_in=60), Ack(job)], default_max_attempts=5)
        # the failure applied first (the row went back to pending), so the completion no
        # longer matches a claim: it is rejected, not silently reported as done
        assert outcomes == ["retry", "lost"]
        (state,) = await source.job_states([job.id])
        assert (state.status, state.last_error) == ("pending", "boom")
