"""The contract suite is only worth trusting if it fails for a broken source.

Each case is a test-only ``MemoryJobSource`` subclass with one deliberate bug. An inner
pytest session (``pytester``, in a subprocess, exactly as a third party would run it)
subclasses ``SourceContract`` for it; we assert that the tests which guard that rule fail
and that the suite as a whole does not pass.
"""

from __future__ import annotations

import re

import pytest
import trio

INI = "[pytest]\ntrio_mode = true\n"

HEADER = """
from collections.abc import Collection, Sequence

import pytest

from jobbuf import Job, MemoryJobSource
from jobbuf.testing import SourceContract
"""

BROKEN = {
    # release() reports success but changes nothing: jobs stay claimed (stranded).
    "forgets_to_release": """
class Broken(MemoryJobSource):
    async def release(self, jobs: Sequence[Job]) -> list[int]:
        return []
""",
    # release_owner() releases the kept ids too: a buffer's in-flight jobs would be re-run.
    "release_owner_ignores_keep": """
class Broken(MemoryJobSource):
    async def release_owner(self, owner: str, keep: Collection[int] = ()) -> list[int]:
        return await super().release_owner(owner)
""",
    # enqueue() drops the priority, so claims come out plain FIFO.
    "claims_fifo": """
class Broken(MemoryJobSource):
    async def enqueue(self, queue, payload, *, priority=0, run_at=None, max_attempts=None):
        return await super().enqueue(queue, payload, run_at=run_at, max_attempts=max_attempts)
""",
}

SUITE = """
class TestBrokenSource(SourceContract):
    @pytest.fixture
    def source(self) -> Broken:
        return Broken()
"""

MUST_FAIL = {
    "forgets_to_release": {
        "test_release_gives_the_attempt_back_and_clears_the_owner",
        "test_release_with_a_stale_claim_does_nothing",
        "test_claim_counts_an_attempt_and_records_the_claim",
        "test_ack_returns_one_outcome_per_ack_in_order",
    },
    "release_owner_ignores_keep": {"test_release_owner_releases_that_owner_except_kept"},
    "claims_fifo": {
        "test_claim_orders_by_priority_then_run_at_then_id",
        "test_enqueue_stores_a_pending_row_with_its_options",
    },
}


def _failed_tests(output: str) -> set[str]:
    return set(re.findall(r"^FAILED \S+::TestBrokenSource::(\w+)", output, flags=re.MULTILINE))


@pytest.mark.parametrize("bug", sorted(BROKEN))
async def test_contract_fails_for_a_broken_source(pytester: pytest.Pytester, bug: str) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(**{f"test_{bug}": HEADER + BROKEN[bug] + SUITE})
    with trio.fail_after(120):
        result = await trio.to_thread.run_sync(lambda: pytester.runpytest_subprocess("-q", "-rf", timeout=110))
    failed = _failed_tests(result.stdout.str())
    assert MUST_FAIL[bug] <= failed, result.stdout.str()
    outcomes = result.parseoutcomes()
    assert result.ret == pytest.ExitCode.TESTS_FAILED and outcomes["failed"] == len(failed)
    assert outcomes.get("passed", 0) > 0  # the rest of the suite still runs and passes


async def test_contract_passes_for_the_real_memory_source(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_ok=HEADER + "\nBroken = MemoryJobSource\n" + SUITE)
    with trio.fail_after(120):
        result = await trio.to_thread.run_sync(lambda: pytester.runpytest_subprocess("-q", timeout=110))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert result.parseoutcomes()["passed"] >= 25
