"""The ``postgres_source`` fixture leaves no schema behind, whatever the tests do.

An inner pytest session (a subprocess, so its session really ends) uses the fixture in a
test that passes, one that fails, one whose own fixture raises after the schema exists,
and one whose per-test drop is made to fail (so only the session-end cleanup can remove
it). Each records ``source.schema``; afterwards none of those schemas may exist.
"""

from __future__ import annotations

import asyncio
from functools import partial

import asyncpg
import pytest
import trio

INI = "[pytest]\ntrio_mode = true\n"

CONFTEST = """
from pathlib import Path

import pytest

import jobbuf.testing.plugin as plugin

RECORD = Path({record!r})
LEFTOVER = Path({leftover!r})


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session, exitstatus):
    # runs around the plugin's session-end cleanup: what is left for it to drop?
    LEFTOVER.write_text("".join(name + "\\n" for name in plugin.leftover_schemas()))
    return (yield)


def record(source):
    with RECORD.open("a") as f:
        f.write(source.schema + "\\n")


@pytest.fixture
async def recorded(postgres_source):
    record(postgres_source)
    await postgres_source.enqueue("default", {{"x": 1}})
    return postgres_source


@pytest.fixture
async def broken_setup(recorded):
    raise RuntimeError("fixture blew up after the schema was made")


@pytest.fixture
def failing_drop(monkeypatch):
    def drop_schema(dsn, schema):
        raise ConnectionError("database went away during teardown")
    monkeypatch.setattr(plugin, "drop_schema", drop_schema)
"""

TESTS = """
async def test_passes(recorded):
    assert len(await recorded.job_states()) == 1


async def test_fails(recorded):
    assert await recorded.job_states() == [], "deliberate failure"


async def test_fixture_raises(broken_setup):
    pass


async def test_per_test_drop_fails(failing_drop, recorded):
    assert len(await recorded.job_states()) == 1
"""


def _existing(dsn: str, names: list[str]) -> list[str]:
    async def query() -> list[str]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])", names)
            return [r["nspname"] for r in rows]
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()  # plain asyncio on its own loop, in a worker thread
    try:
        return loop.run_until_complete(query())
    finally:
        loop.close()


async def _run_inner(pytester: pytest.Pytester, tests: str) -> pytest.RunResult:
    """Run ``tests`` as ``test_inner.py`` in an inner pytest session (a subprocess)."""
    pytester.makepyfile(test_inner=tests)
    run = partial(pytester.runpytest_subprocess, "-q", "-p", "no:cacheprovider", timeout=110)
    return await trio.to_thread.run_sync(run)


async def test_postgres_fixture_leaves_no_schema_behind(pytester: pytest.Pytester, jobbuf_dsn: str) -> None:
    record, leftover = pytester.path / "schemas.txt", pytester.path / "leftover.txt"
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST.format(record=str(record), leftover=str(leftover)))
    with trio.fail_after(120):
        result = await _run_inner(pytester, TESTS)
        outcomes = result.parseoutcomes()
        # pytest-trio runs trio fixtures inside the test, so the fixture's error is a failure
        assert (outcomes.get("passed"), outcomes.get("failed")) == (2, 2), result.stdout.str()
        result.stdout.fnmatch_lines(["*deliberate failure*", "*fixture blew up after the schema was made*"])
        names = record.read_text().split()
        assert len(names) == 4 and len(set(names)) == 4
        assert leftover.read_text().split() == [names[3]]  # only the one whose per-test drop failed
        assert await trio.to_thread.run_sync(_existing, jobbuf_dsn, names) == []


AUTOJUMP_TESTS = """
import pytest, trio, trio.testing

async def test_virtual(postgres_source, autojump_clock):
    pass

@pytest.fixture
def my_clock():
    return trio.testing.MockClock(autojump_threshold=0)

async def test_own_clock(postgres_source, my_clock):
    pass

@pytest.mark.usefixtures("autojump_clock")  # pytest-trio does not run this one under it
async def test_real_time(postgres_source):
    assert await postgres_source.enqueue("q", 1)
"""


async def test_postgres_fixture_under_autojump_clock_says_why_it_cannot(pytester: pytest.Pytester) -> None:
    # Before, it failed with DatabaseUnavailableError (a TimeoutError): the clock jumped
    # past the connection's wait.
    pytester.makeini(INI)
    with trio.fail_after(120):
        result = await _run_inner(pytester, AUTOJUMP_TESTS)
    outcomes = result.parseoutcomes()
    assert (outcomes.get("failed"), outcomes.get("passed")) == (2, 1), result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*Failed: postgres_source cannot run under autojump_clock*Use memory_source*", "FAILED*test_virtual*",
         "FAILED*test_own_clock*"]
    )  # fmt: skip
