"""The feed: snapshot shape, worker states, rates, LISTEN wake-ups, losing the database."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from monitor_helpers import Db, Role, run, wait_for

from jobbuf_monitor.embedded import dsn_parse_error, dsn_password, redact_dsn
from jobbuf_monitor.feed import (
    STATS_DEFAULTS,
    Feed,
    FeedUpdate,
    Snapshot,
    read_snapshot,
    safe_error,
    with_rates,
    worker_state,
)


def test_snapshot_has_workers_with_state_and_flat_stats_and_queue_counts(db: Db) -> None:
    async def go() -> Snapshot:
        await db.add_worker("alpha", depth=25, claimed=100, discarded=3, last_error="boom")
        await db.add_worker("beta", age=10.0)  # stale: 10 s > 3 x stats_interval, < lease
        await db.add_worker("gamma", age=100.0)  # gone: past the 30 s lease
        await db.add_jobs("default", 4)
        await db.add_jobs("default", 2, delay=3600)
        await db.add_jobs("default", 3, status="claimed")
        await db.add_jobs("mail", 1, status="dead")
        conn = await asyncpg.connect(db.dsn)
        try:
            return await read_snapshot(conn, db.schema)
        finally:
            await conn.close()

    snap = run(go())
    by_id = {w["worker_id"]: w for w in snap.workers}
    assert [by_id[k]["state"] for k in ("alpha", "beta", "gamma")] == ["live", "stale", "gone"]
    alpha = by_id["alpha"]
    assert set(STATS_DEFAULTS) | {"host", "pid", "state", "heartbeat_age"} <= set(alpha)
    assert (alpha["depth"], alpha["claimed"], alpha["discarded"], alpha["last_error"]) == (25, 100, 3, "boom")
    assert by_id["beta"]["heartbeat_age"] == pytest.approx(10.0, abs=2.0)
    queues = {q["queue"]: q for q in snap.queues}
    assert {k: queues["default"][k] for k in ("pending", "scheduled", "claimed", "dead", "done")} == {
        "pending": 4, "scheduled": 2, "claimed": 3, "dead": 0, "done": 0,
    }  # fmt: skip
    assert queues["default"]["oldest_pending_age"] >= 0
    assert queues["mail"]["dead"] == 1 and queues["mail"]["oldest_pending_age"] is None


def test_queue_limits_queues_and_workers(db: Db) -> None:
    async def go() -> Snapshot:
        await db.add_worker("mailer", queues=("mail",))
        await db.add_worker("other", queues=("default",))
        await db.add_jobs("default", 2)
        await db.add_jobs("mail", 5)
        conn = await asyncpg.connect(db.dsn)
        try:
            return await read_snapshot(conn, db.schema, "mail")
        finally:
            await conn.close()

    snap = run(go())
    assert [w["worker_id"] for w in snap.workers] == ["mailer"]
    assert [(q["queue"], q["pending"]) for q in snap.queues] == [("mail", 5)]


def test_worker_state_thresholds_follow_its_config() -> None:
    assert worker_state(2.9, {}) == "live"
    assert worker_state(3.1, {}) == "stale"
    assert worker_state(30.1, {}) == "gone"
    assert worker_state(5.0, {"stats_interval": 2.0}) == "live"
    assert worker_state(6.0, {"lease": 5.0}) == "gone"
    assert worker_state(1.0, {"stats_interval": "junk"}) == "live"


def test_rates_are_counter_deltas_over_time_per_instance() -> None:
    def worker(instance: str, claimed: int, discarded: int = 0) -> dict[str, object]:
        return {**STATS_DEFAULTS, "instance": instance, "state": "live", "claimed": claimed, "discarded": discarded}

    first = with_rates(Snapshot([worker("a", 10), worker("b", 5)], [], taken_at=100.0), None)
    assert first.rates == {}
    second = with_rates(Snapshot([worker("a", 30, 4), worker("c", 999)], [], taken_at=102.0), first)
    assert second.rates["claims_per_s"] == 10.0  # only "a" is in both: (30 - 10) / 2 s
    assert second.rates["discards_per_s"] == 2.0
    assert second.workers[1]["claims_per_s"] == 0.0  # a new instance has no rate yet


def test_safe_error_never_shows_the_password() -> None:
    dsn = "postgresql://bob:s3cr%21t@db:5432/x"
    message = safe_error(ValueError("failed for postgresql://bob:s3cr%21t@db/x with s3cr!t"), dsn)
    assert "s3cr" not in message and "***" in message


def test_notify_refreshes_at_once_without_waiting_for_the_poll(db: Db) -> None:
    updates: list[FeedUpdate] = []

    async def go() -> None:
        feed = Feed(db.dsn, db.schema, updates.append, refresh=60.0)
        task = asyncio.create_task(feed.run())
        try:
            await wait_for(lambda: any(u.state == "connected" for u in updates))
            await db.add_worker("late", depth=7)  # publishes and NOTIFYs "<schema>.workers"
            await wait_for(lambda: updates[-1].snapshot is not None and len(updates[-1].snapshot.workers) == 1, 5.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(go())
    last = updates[-1].snapshot
    assert last is not None and last.workers[0]["depth"] == 7


def test_lost_database_reports_disconnected_then_recovers(db: Db, reader: Role) -> None:
    """The reader role is read-only (the monitor needs no more); forbidding its logins and
    killing its sessions is a deterministic outage."""
    updates: list[FeedUpdate] = []

    async def go() -> None:
        await db.add_worker("w1")
        feed = Feed(reader.dsn, db.schema, updates.append, refresh=0.2, max_backoff=0.5)
        task = asyncio.create_task(feed.run())
        try:
            await wait_for(lambda: feed.state == "connected")
            await reader.set_login(False)
            await wait_for(lambda: feed.state == "disconnected")
            await asyncio.sleep(1.0)  # several failed reconnects: it stays disconnected
            assert feed.state == "disconnected"
            await reader.set_login(True)
            await wait_for(lambda: feed.state == "connected")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(go())
    errors = [u.error for u in updates if u.state == "disconnected"]
    assert errors and all(e for e in errors)
    assert updates[-1].snapshot is not None and updates[-1].snapshot.workers[0]["worker_id"] == "w1"


def test_dropped_schema_reports_no_schema(db: Db) -> None:
    updates: list[FeedUpdate] = []

    async def go() -> None:
        feed = Feed(db.dsn, db.schema, updates.append, refresh=0.2, max_backoff=0.3)
        task = asyncio.create_task(feed.run())
        try:
            await wait_for(lambda: feed.state == "connected")
            conn = await asyncpg.connect(db.dsn)
            await conn.execute(f"ALTER TABLE {db.s}.workers RENAME TO workers_away")
            await wait_for(lambda: feed.state == "no schema")
            await conn.execute(f"ALTER TABLE {db.s}.workers_away RENAME TO workers")
            await conn.close()
            await wait_for(lambda: feed.state == "connected")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(go())
    assert any("jobbuf migrate" in (u.error or "") for u in updates if u.state == "no schema")


@pytest.mark.parametrize("password", ["Xy9#secret", "Xy9/secret", "Xy9?secret", "Xy9@secret", "Xy9:secret"])
@pytest.mark.parametrize("user", ["bob", "bob@server"])  # the second as some hosted services write it
def test_passwords_with_reserved_characters_are_redacted_whole(user: str, password: str) -> None:
    # Regression: the URL rule stopped at the first "#", "/", "?" or "@" of the password,
    # and matched nothing when the user name held an "@".
    dsn = f"postgresql://{user}:{password}@db:5432/x?sslmode=require"
    assert redact_dsn(dsn) == f"postgresql://{user}:***@db:5432/x?sslmode=require"
    assert dsn_password(dsn) == password
    for clean in ("postgresql://db:5432/x and bob@example", "postgresql://bob@db:5432/x", "postgresql://db/x?a=b&c=d"):
        assert redact_dsn(clean) == clean
    assert redact_dsn("postgresql://db/x?password=s3cret&sslmode=y") == "postgresql://db/x?password=***&sslmode=y"
    # A parser's message may quote a piece of such a password: it is not shown then.
    assert "Xy9" not in dsn_parse_error(ValueError("invalid literal for int() with base 10: 'Xy9'"), dsn)
    assert dsn_parse_error(ValueError("invalid port"), dsn) == "invalid port"  # no piece of it: shown
