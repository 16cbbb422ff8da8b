"""The Textual app under Pilot, fed by real rows in a fresh schema (plain asyncio)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from monitor_helpers import Db, Role, run, wait_for
from textual.pilot import Pilot
from textual.widgets import Input

from jobbuf_monitor.app import MonitorApp
from jobbuf_monitor.widgets import DetailsScreen, QueuesTable, WorkersTable

SIZE = (150, 40)


def drive(app: MonitorApp, script: Callable[[Pilot[None], MonitorApp], Awaitable[None]], timeout: float = 30.0) -> None:
    """Run ``script`` against ``app`` under Pilot on a SelectorEventLoop, bounded."""

    async def go() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await script(pilot, app)

    run(go(), timeout)


def rows(app: MonitorApp) -> dict[str, list[str]]:
    """The workers table as {worker id: [cell text, ...]} in display order."""
    table = app.query_one(WorkersTable)
    out: dict[str, list[str]] = {}
    for row_key in table.rows:
        cells = [str(c) for c in table.get_row(row_key)]
        out[cells[0]] = cells
    return out


def order(app: MonitorApp) -> list[str]:
    table = app.query_one(WorkersTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


def header(app: MonitorApp) -> str:
    return app.header_text().plain


async def seeded(db: Db) -> None:
    counters: dict[str, Any] = dict(claimed=120, taken=95, discarded=4, released=4, completed=90, failed=2)
    await db.add_worker("api-1", host="web-1", pid=11, depth=25, capacity=50, poll_errors=1,
                        last_error="connection reset by peer", **counters)  # fmt: skip
    await db.add_worker("api-2", host="web-2", pid=12, depth=40, capacity=50, claimed=300)
    await db.add_worker("batch-1", host="batch-9", pid=13, depth=2, capacity=10, age=12.0, queues=("reports",))
    await db.add_jobs("default", 30)
    await db.add_jobs("reports", 5, status="dead")


def with_rows(n: int, app: MonitorApp) -> Callable[[], bool]:
    def ready() -> bool:
        return app.query_one(WorkersTable).row_count == n

    ready.__doc__ = f"workers table shows {n} rows"
    return ready


def test_tables_show_depth_claims_discards_and_mark_stale(db: Db) -> None:
    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(with_rows(3, app))
        table = rows(app)
        api1 = table["api-1"]
        assert api1[1] == "web-1:11" and "live" in api1[2] and "25/50" in api1[3]
        assert api1[4:11] == ["120", "95", "4", "4", "90", "2", "1"]
        assert "STALE" in table["batch-1"][2]
        assert "live" in table["api-2"][2] and "40/50" in table["api-2"][3]
        queues = app.query_one(QueuesTable)
        default = [str(c) for c in queues.get_row("default")]
        assert default[1] == "30" and [str(c) for c in queues.get_row("reports")][4] == "5"
        text = header(app)
        assert "connected" in text and db.schema in text and "2 live" in text and "1 stale" in text
        assert "depth 67/110" in text

    run(seeded(db))
    drive(MonitorApp(db.dsn, schema=db.schema, refresh=0.2), script)


def test_pause_freezes_the_screen_until_resumed(db: Db) -> None:
    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(with_rows(3, app))
        await pilot.press("p")
        assert "PAUSED" in header(app)
        await db.add_worker("late-1", depth=1)
        await wait_for(lambda: app.latest is not None and len(app.latest.workers) == 4)
        await pilot.pause(0.3)
        assert app.query_one(WorkersTable).row_count == 3
        await pilot.press("p")
        assert app.query_one(WorkersTable).row_count == 4 and "PAUSED" not in header(app)

    run(seeded(db))
    drive(MonitorApp(db.dsn, schema=db.schema, refresh=0.1), script)


def test_sort_cycles_through_orders(db: Db) -> None:
    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(with_rows(3, app))
        assert order(app) == ["api-1", "api-2", "batch-1"]
        await pilot.press("s")  # depth, deepest first
        assert order(app) == ["api-2", "api-1", "batch-1"]
        assert app.query_one(WorkersTable).border_subtitle == "sort: depth"
        for _ in range(3):
            await pilot.press("s")  # claims/s, discarded, state (gone, stale, then live)
        assert order(app)[0] == "batch-1"
        await pilot.press("s")
        assert order(app) == ["api-1", "api-2", "batch-1"]

    run(seeded(db))
    drive(MonitorApp(db.dsn, schema=db.schema, refresh=5.0), script)


def test_filter_by_id_or_host_and_escape_clears(db: Db) -> None:
    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(with_rows(3, app))
        await pilot.press("slash")
        box = app.query_one("#filter", Input)
        assert box.display and box.has_focus
        await pilot.press(*"web")  # host substring
        assert sorted(rows(app)) == ["api-1", "api-2"]
        await pilot.press("backspace", "backspace", "backspace", *"batch")  # worker id substring
        assert list(rows(app)) == ["batch-1"]
        await pilot.press("enter")  # keep the filter, close the box
        assert not box.display and list(rows(app)) == ["batch-1"]
        await pilot.press("slash")
        await pilot.press("escape")
        assert not box.display and len(rows(app)) == 3 and app.filter_text == ""

    run(seeded(db))
    drive(MonitorApp(db.dsn, schema=db.schema, refresh=5.0), script)


def test_enter_opens_worker_details(db: Db) -> None:
    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(with_rows(3, app))
        await pilot.press("enter")  # cursor starts on the first row: api-1
        assert isinstance(app.screen, DetailsScreen)
        body = str(app.screen.query_one("#details-body").render())
        assert "connection reset by peer" in body and "stats_interval" in body
        assert "default" in body and "uptime" in body and "1h00m" in body
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailsScreen)
        await pilot.press("down", "down", "enter")
        assert isinstance(app.screen, DetailsScreen) and app.screen.worker["worker_id"] == "batch-1"

    run(seeded(db))
    drive(MonitorApp(db.dsn, schema=db.schema, refresh=5.0), script)


def test_queue_option_limits_queues_and_workers(db: Db) -> None:
    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(with_rows(1, app))
        assert list(rows(app)) == ["batch-1"]
        assert list(app.query_one(QueuesTable).rows) == ["reports"]

    run(seeded(db))
    drive(MonitorApp(db.dsn, schema=db.schema, queue="reports", refresh=5.0), script)


def test_lost_database_shows_disconnected_and_recovers(db: Db, reader: Role) -> None:
    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(with_rows(3, app))
        await reader.set_login(False)
        await wait_for(lambda: app.state == "disconnected")
        await pilot.pause(0.1)
        assert "disconnected" in header(app) and "retrying" in header(app)
        assert app.query_one(WorkersTable).has_class("-offline")
        assert app.query_one(WorkersTable).row_count == 3  # the last data stays on screen
        await reader.set_login(True)
        await db.add_worker("after", depth=3)
        await wait_for(lambda: app.state == "connected", 15.0)
        await wait_for(with_rows(4, app))
        assert "connected" in header(app) and not app.query_one(WorkersTable).has_class("-offline")

    run(seeded(db))
    app = MonitorApp(reader.dsn, schema=db.schema, refresh=0.2)
    app.feed.max_backoff = 0.5
    drive(app, script)


def test_password_never_reaches_the_screen(db: Db) -> None:
    shots: list[str] = []

    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(with_rows(3, app))
        shots.append(app.export_screenshot())

    run(seeded(db))
    secret_dsn = db.dsn.replace("://postgres@", "://postgres:hunter2@")  # trust auth ignores it
    assert "hunter2" in secret_dsn
    app = MonitorApp(secret_dsn, schema=db.schema, refresh=5.0)
    drive(app, script)
    assert "hunter2" not in shots[0] and "hunter2" not in header(app)
    assert "postgres:***@" in header(app)


def test_header_waits_for_first_snapshot_without_data(db: Db) -> None:
    seen: dict[str, Any] = {}

    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        seen["text"] = header(app)

    app = MonitorApp("postgresql://nobody@127.0.0.1:1/none", schema=db.schema, refresh=5.0)
    drive(app, script)
    assert "waiting for the first snapshot" in seen["text"]


def test_counts_growing_past_the_column_width_are_shown_whole(db: Db) -> None:
    # Regression: cells updated in place did not widen their column, so 2,065 showed as "2,06".
    instance = run(db.add_worker("grower", claimed=5, completed=5))

    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(with_rows(1, app))
        await db.add_worker("grower", instance=instance, claimed=1234567, completed=7654321)
        await wait_for(lambda: rows(app)["grower"][4] == "1,234,567")
        table = app.query_one(WorkersTable)
        for label in ("Claimed", "Done"):
            assert table.columns[label].get_render_width(table) >= len("7,654,321") + 2 * table.cell_padding  # type: ignore[index]

    drive(MonitorApp(db.dsn, schema=db.schema, refresh=0.1), script)


def test_updates_go_on_while_details_are_open(db: Db) -> None:
    # The widgets live on the base screen; redraws must go on under the details screen.
    instance = run(db.add_worker("busy", claimed=1))

    async def script(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(with_rows(1, app))
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, DetailsScreen))
        before = app.updates
        await db.add_worker("busy", instance=instance, claimed=2)
        await wait_for(lambda: app.updates > before and rows(app)["busy"][4] == "2")
        assert isinstance(app.screen, DetailsScreen)

    drive(MonitorApp(db.dsn, schema=db.schema, refresh=0.1), script)
