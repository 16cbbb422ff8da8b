"""``SourceContract``: the pytest suite every :class:`jobbuf.JobSource` must pass.

jobbuf's own ``MemoryJobSource`` and ``PostgresJobSource`` run exactly this suite, so a
third-party source (Redis, SQLite, another schema layout...) that passes it behaves as a
buffer expects: claim order, one owner at a time, guarded acks and releases, retries and
dead jobs, lease rescue, wake-ups. The suite is proven to fail for broken sources (see
jobbuf's ``tests/testing/test_contract_catches_broken_source.py``).

How to use it, in your project's tests (pytest-trio with ``trio_mode = true``)::

    # tests/test_my_source_contract.py
    import pytest
    from jobbuf.testing import SourceContract

    class TestMySource(SourceContract):      # the name must start with "Test"
        lease = 1.0                          # optional: real seconds for lease-expiry tests
        keeps_completed = False              # optional: True if completed rows stay "done"

        @pytest.fixture
        async def source(self):
            async with open_my_source(...) as src:   # a FRESH, EMPTY source per test
                yield src

Rules for the ``source`` fixture: each test gets its own source with no rows, no workers
and no listeners of other tests (use a fresh database, schema or key prefix; the
``postgres_source`` fixture is an example). It may be sync or async, and may live in the
class or in a conftest. Run one test with ``pytest -k "TestMySource and release"``; a
failing test's name says which rule broke. Add tests of your own to the subclass freely.

How it runs: only the Protocol's methods are used; every test runs in **real time** (never
under an autojump clock, so it also works against a real database) and finishes under
``trio.fail_after(10)``; the lease-expiry tests wait a few multiples of ``lease``.

Out of scope, because it is source-specific: quarantine of an undecodable payload (a
source has its own way to store one; test it in that source's own tests), and worker
registration as seen by readers (the Protocol has no method to read workers back).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from .._errors import ConfigError
from .._job import Job
from .._source import JobSource
from ._contract_acks import AckLeaseAndOperatorContract
from ._contract_support import TIMEOUT, claim, claim_until, past, row_state

__all__ = ["SourceContract"]


class SourceContract(AckLeaseAndOperatorContract):
    """The behaviour every :class:`JobSource` shares (see ``DESIGN.md`` §1 and §2): enqueue,
    claim order, release, acks, leases, wake-ups and operator methods, about 30 tests.

    Subclass it as ``Test...`` and give it a ``source`` fixture; set ``lease`` and
    ``keeps_completed`` as class attributes when needed (see the module docstring).
    """

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
            due = past(30)
            ids = await source.enqueue_many("default", ["a", "b", "c"], priority=2, run_at=due, max_attempts=5)
            assert len(ids) == 3 and ids == sorted(ids) and len(set(ids)) == 3
            states = await source.job_states(ids)
            assert [(s.priority, s.max_attempts, s.status) for s in states] == [(2, 5, "pending")] * 3
            assert all(abs((s.run_at - due).total_seconds()) < 0.001 for s in states)
            jobs = (await claim(source)).jobs
            assert [(j.id, j.payload) for j in jobs] == list(zip(ids, ["a", "b", "c"], strict=True))
            assert await source.enqueue_many("default", []) == []

    async def test_payload_round_trips_as_json(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            payload: Any = {"s": "é\n", "n": [1, 2.5, None, True], "t": (1, 2), "nested": {"k": {}}}
            await source.enqueue("default", payload)
            [job] = (await claim(source)).jobs
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
            with pytest.raises(ConfigError):  # the arguments are checked before the payload
                await source.enqueue("bad name", {1, 2})
            with pytest.raises(ConfigError):
                await source.enqueue_many("bad name", [{1, 2}])
            assert await source.job_states() == []

    # -- claim ---------------------------------------------------------------------------
    async def test_claim_orders_by_priority_then_run_at_then_id(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            base = past(60)
            a = await source.enqueue("default", "a", run_at=base)
            b = await source.enqueue("default", "b", run_at=base - timedelta(seconds=10))
            c = await source.enqueue("default", "c", run_at=base, priority=5)
            d = await source.enqueue("default", "d", run_at=base)
            e = await source.enqueue("default", "e", run_at=base - timedelta(seconds=100), priority=-1)
            first = await claim(source, limit=2)
            assert [j.id for j in first.jobs] == [c, b]
            rest = await claim(source, limit=10)
            assert [j.id for j in rest.jobs] == [a, d, e]

    async def test_claimed_jobs_carry_their_timestamps_exactly(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            times = [
                datetime(1700, 1, 1, 0, 0, 0, 1, UTC),
                datetime(1969, 12, 31, 23, 59, 59, 999999, UTC),
                datetime(1970, 1, 1, 0, 0, 0, 1, UTC),
                datetime(2001, 2, 3, 4, 5, 6, 789012, UTC),
                past(1).replace(microsecond=999999) - timedelta(seconds=1),
            ]
            ids = [await source.enqueue("default", n, run_at=t) for n, t in enumerate(times)]
            together = await source.enqueue_many("default", ["x", "y"])
            jobs = (await claim(source, limit=10)).jobs
            assert [(j.id, j.run_at) for j in jobs[: len(times)]] == list(zip(ids, times, strict=True))
            x, y = jobs[len(times) :]
            assert [x.id, y.id] == together
            assert x.run_at == x.created_at == y.run_at == y.created_at  # "now", once per enqueue
            states = {s.id: s for s in await source.job_states(ids + together)}
            assert all(states[j.id].run_at == j.run_at for j in jobs)

    async def test_claim_over_several_queues_keeps_one_claim_order(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            base = past(60)
            a0 = await source.enqueue("alpha", "a0", run_at=base)
            b5 = await source.enqueue("beta", "b5", run_at=base, priority=5)
            a3 = await source.enqueue("alpha", "a3", run_at=base, priority=3)
            b0 = await source.enqueue("beta", "b0", run_at=base - timedelta(seconds=1))
            first = await claim(source, queues=("alpha", "beta"), limit=3)
            assert [j.id for j in first.jobs] == [b5, a3, b0]
            assert [j.id for j in (await claim(source, queues=("beta", "alpha"))).jobs] == [a0]

    async def test_future_run_at_is_not_claimed_until_due(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            later = await source.enqueue("default", "later", run_at=datetime.now(UTC) + timedelta(hours=1))
            soon = await source.enqueue("default", "soon", run_at=datetime.now(UTC) + timedelta(seconds=0.5))
            assert (await claim(source)).jobs == []
            result = await claim_until(source, "owner-a", 30.0, lambda r: bool(r.jobs))
            assert [j.id for j in result.jobs] == [soon]
            assert (await row_state(source, later)).status == "pending"

    async def test_claim_respects_limit_and_queues(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            ids = await source.enqueue_many("default", list(range(5)))
            other = await source.enqueue("other", "x")
            first = await claim(source, limit=3)
            assert [j.id for j in first.jobs] == ids[:3]
            assert [j.id for j in (await claim(source, limit=10)).jobs] == ids[3:]
            assert (await row_state(source, other)).status == "pending"
            both = await claim(source, queues=("other", "default"), limit=10)
            assert [j.id for j in both.jobs] == [other]

    async def test_concurrent_claims_are_disjoint(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            ids = await source.enqueue_many("default", list(range(20)))
            results: dict[str, list[int]] = {}

            async def claim_as(owner: str) -> None:
                results[owner] = [j.id for j in (await claim(source, owner, limit=12)).jobs]

            async with trio.open_nursery() as nursery:
                for owner in ("owner-a", "owner-b"):
                    nursery.start_soon(claim_as, owner)
            a, b = results["owner-a"], results["owner-b"]
            assert not set(a) & set(b)
            assert sorted(a + b) == ids[: len(a) + len(b)] and len(a + b) == 20

    async def test_claim_counts_an_attempt_and_records_the_claim(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", {"k": 1}, priority=1, max_attempts=7)
            [job] = (await claim(source, "owner-a")).jobs
            assert (job.id, job.queue, job.payload, job.priority) == (job_id, "default", {"k": 1}, 1)
            assert (job.attempts, job.max_attempts) == (1, 7)
            assert job.claim is not None and job.claim.owner == "owner-a"
            assert job.run_at is not None and job.created_at is not None
            state = await row_state(source, job_id)
            assert (state.status, state.attempts, state.owner, state.worker_id) == (
                "claimed",
                1,
                "owner-a",
                "worker-owner-a",
            )
            await source.release([job])
            [again] = (await claim(source, "owner-a")).jobs
            assert again.claim is not None and again.claim != job.claim  # a fresh token per claim

    # -- release -------------------------------------------------------------------------
    async def test_release_gives_the_attempt_back_and_clears_the_owner(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [job] = (await claim(source)).jobs
            assert await source.release([job]) == [job_id]
            state = await row_state(source, job_id)
            assert (state.status, state.attempts, state.owner, state.worker_id) == ("pending", 0, None, None)
            [again] = (await claim(source, "owner-b")).jobs
            assert (again.id, again.attempts) == (job_id, 1)

    async def test_release_with_a_stale_claim_does_nothing(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            job_id = await source.enqueue("default", "x")
            [old] = (await claim(source, "owner-a")).jobs
            await source.release([old])
            [new] = (await claim(source, "owner-b")).jobs
            before = await row_state(source, job_id)
            assert await source.release([old]) == []
            assert await source.release([Job(id=job_id, queue="default", payload="x")]) == []  # no claim
            assert await row_state(source, job_id) == before
            assert before.owner == "owner-b" and new.claim is not None

    async def test_release_owner_releases_that_owner_except_kept(self, source: JobSource) -> None:
        with trio.fail_after(TIMEOUT):
            ids = await source.enqueue_many("default", list(range(4)))
            mine = (await claim(source, "owner-a", limit=3)).jobs
            [theirs] = (await claim(source, "owner-b", limit=3)).jobs
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
