"""The Textual app: a live view of every jobbuf buffer in one schema.

The app owns one :class:`~jobbuf_monitor.feed.Feed`, run as a Textual worker on the app's
asyncio loop. Updates arrive as messages; while paused they are recorded (the trends keep
their history) but the screen is frozen. When the database goes away the header says
``disconnected``, the tables keep the last data (dimmed), and the feed reconnects by itself.
The DSN is shown redacted: no password is ever rendered.
"""

from __future__ import annotations

import asyncio
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from .embedded import redact_dsn
from .feed import Feed, FeedUpdate, Snapshot
from .widgets import DetailsScreen, QueuesTable, Trend, WorkersTable, fmt_rate

__all__ = ["SORTS", "MonitorApp"]

HISTORY = 180
"""Samples kept for the trends (three minutes at the default one-second refresh)."""

_STATE_ORDER = {"gone": 0, "stale": 1, "live": 2}
SORTS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("worker", lambda w: (str(w["worker_id"]), str(w["instance"]))),
    ("depth", lambda w: (-int(w.get("depth") or 0), str(w["worker_id"]))),
    ("claims/s", lambda w: (-float(w.get("claims_per_s") or 0), str(w["worker_id"]))),
    ("discarded", lambda w: (-int(w.get("discarded") or 0), str(w["worker_id"]))),
    ("state", lambda w: (_STATE_ORDER.get(w["state"], 0), -float(w["heartbeat_age"]), str(w["worker_id"]))),
)
"""Sort orders cycled by ``s``: (name, key function)."""

_STATE_BADGE = {
    "connected": ("● connected", "bold green"),
    "connecting": ("◌ connecting…", "bold yellow"),
    "disconnected": ("✖ disconnected", "bold white on red"),
    "no schema": ("✖ no schema", "bold white on red"),
}


class FeedMessage(Message):
    """Carries one :class:`FeedUpdate` from the feed into the app's message queue."""

    def __init__(self, update: FeedUpdate) -> None:
        super().__init__()
        self.update = update


class MonitorApp(App[None]):
    """The jobbuf monitor. ``feed=None`` builds a :class:`Feed` from the other arguments."""

    CSS_PATH = "app.tcss"
    TITLE = "jobbuf-monitor"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("p", "toggle_pause", "Pause"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("slash", "open_filter", "Filter", key_display="/"),
        Binding("enter", "details", "Details", key_display="⏎"),
        Binding("escape", "close_filter", "Clear filter", show=False),
    ]

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "jobbuf",
        queue: str | None = None,
        refresh: float = 1.0,
        screenshot: Path | None = None,
        screenshot_after: float = 3.0,
        handle_signals: bool = False,
    ) -> None:
        super().__init__()
        self.dsn_shown = redact_dsn(dsn)
        self.schema, self.queue_filter = schema, queue
        self.feed = Feed(dsn, schema, self._from_feed, queue=queue, refresh=refresh)
        self.screenshot, self.screenshot_after = screenshot, screenshot_after
        self.handle_signals = handle_signals
        self.latest: Snapshot | None = None
        self.state, self.error = "connecting", ""
        self.paused, self.sort_index, self.filter_text = False, 0, ""
        self.updates = 0  # updates rendered; tests wait on this
        self.history: dict[str, deque[float]] = {k: deque(maxlen=HISTORY) for k in ("depth", "claims", "discards")}

    # -- layout --------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="header")
        with Horizontal(id="trends"):
            yield Trend("total depth", id="trend-depth")
            yield Trend("claims/s", id="trend-claims")
            yield Trend("discards/s", id="trend-discards")
        yield WorkersTable(id="workers")
        yield QueuesTable(id="queues")
        yield Input(placeholder="filter workers by id or host (enter: keep, esc: clear)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#workers").border_title = "workers"
        self.query_one("#queues").border_title = "queues" + (
            f" (only {self.queue_filter})" if self.queue_filter else ""
        )
        self.query_one(WorkersTable).focus()
        self._render_header()
        self.run_worker(self.feed.run(), name="feed", group="feed", exclusive=True)
        if self.handle_signals:
            # SIGTERM/SIGHUP end the app normally, so the CLI's cleanup (stopping --demo's
            # child process) runs instead of the process dying with an orphan behind it.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, self.exit)
        if self.screenshot is not None:
            self.set_timer(self.screenshot_after, self._take_screenshot)

    def _take_screenshot(self) -> None:
        assert self.screenshot is not None
        self.save_screenshot(filename=self.screenshot.name, path=str(self.screenshot.parent.resolve()))
        self.exit()

    # -- feed ----------------------------------------------------------------------------
    def _from_feed(self, update: FeedUpdate) -> None:
        # Called by the feed on this app's loop; hand it on as a message (never raises).
        self.post_message(FeedMessage(update))

    @on(FeedMessage)
    def _on_feed(self, message: FeedMessage) -> None:
        update = message.update
        self.state, self.error = update.state, update.error or ""
        snap = update.snapshot
        if snap is not None:
            self.latest = snap
            self.history["depth"].append(snap.total("depth"))
            self.history["claims"].append(snap.rates.get("claims_per_s", 0.0))
            self.history["discards"].append(snap.rates.get("discards_per_s", 0.0))
        if not self.paused:
            self.refresh_view()
        elif self.screen_stack:  # frozen, but a lost connection still shows
            for table in self.screen_stack[0].query(DataTable):
                table.set_class(self.state != "connected", "-offline")

    # -- rendering -----------------------------------------------------------------------
    def visible_workers(self) -> list[dict[str, Any]]:
        """The latest workers, filtered by the ``/`` text and sorted by the current sort."""
        if self.latest is None:
            return []
        needle = self.filter_text.lower()
        rows = [
            w for w in self.latest.workers if needle in str(w["worker_id"]).lower() or needle in str(w["host"]).lower()
        ]
        return sorted(rows, key=SORTS[self.sort_index][1])

    def refresh_view(self) -> None:
        """Redraw everything from the latest snapshot (a no-op for the tables before the first).

        The widgets live on the base screen, which is drawn under the details screen too,
        so updates go on while details are open. While the app shuts down the widgets are
        already gone; an update that arrives then is dropped."""
        if not self.screen_stack:
            return
        try:
            self._redraw(self.screen_stack[0])
        except NoMatches:
            return

    def _redraw(self, base: Screen[Any]) -> None:
        base.query_one("#header", Static).update(self.header_text())
        for table in base.query(DataTable):
            table.set_class(self.state != "connected", "-offline")
        if self.latest is None:
            return
        workers = self.visible_workers()
        base.query_one(WorkersTable).show(workers)
        base.query_one(QueuesTable).show(self.latest.queues)
        title = f"workers ({len(workers)} of {len(self.latest.workers)})" if self.filter_text else "workers"
        base.query_one("#workers").border_title = title
        base.query_one("#workers").border_subtitle = f"sort: {SORTS[self.sort_index][0]}"
        rates = self.latest.rates
        base.query_one("#trend-depth", Trend).push(self.history["depth"], f"{self.latest.total('depth'):,.0f}")
        base.query_one("#trend-claims", Trend).push(self.history["claims"], fmt_rate(rates.get("claims_per_s")))
        base.query_one("#trend-discards", Trend).push(self.history["discards"], fmt_rate(rates.get("discards_per_s")))
        self.updates += 1

    def header_text(self) -> Text:
        """Line one: where and whether connected; line two: totals."""
        badge, style = _STATE_BADGE.get(self.state, (self.state, "bold"))
        text = Text.assemble(("jobbuf-monitor", "bold magenta"), "  ", (self.dsn_shown, "cyan"), "  schema ",
                             (self.schema, "bold"), "  ", (f" {badge} ", style))  # fmt: skip
        if self.paused:
            text.append("  ")
            text.append(" ⏸ PAUSED ", style="bold black on yellow")
        if self.error and self.state != "connected":
            text.append(f"  {self.error} (retrying)", style="red")
        text.append("\n")
        snap = self.latest
        if snap is None:
            text.append("waiting for the first snapshot…", style="dim")
            return text
        states = [w["state"] for w in snap.workers]
        text.append_text(self._totals(snap, states))
        return text

    def _totals(self, snap: Snapshot, states: list[str]) -> Text:
        live, stale, gone = (states.count(s) for s in ("live", "stale", "gone"))
        pending = sum(int(q.get("pending") or 0) for q in snap.queues)
        dead = sum(int(q.get("dead") or 0) for q in snap.queues)
        parts: list[tuple[str, str, str]] = [
            ("workers ", f"{live} live", "bold green"),
            ("", f" {stale} stale" if stale else "", "bold yellow"),
            ("", f" {gone} gone" if gone else "", "bold red"),
            ("   depth ", f"{snap.total('depth'):,.0f}/{snap.total('capacity'):,.0f}", "bold"),
            ("   in flight ", f"{snap.total('in_flight'):,.0f}", "bold"),
            ("   pending ", f"{pending:,}", "bold cyan"),
            ("   dead ", f"{dead:,}", "bold red" if dead else "dim"),
            ("\nclaims/s ", fmt_rate(snap.rates.get("claims_per_s")), "bold"),
            ("   takes/s ", fmt_rate(snap.rates.get("takes_per_s")), "bold"),
            ("   discards/s ", fmt_rate(snap.rates.get("discards_per_s")), "bold dark_orange"),
            ("   done/s ", fmt_rate(snap.rates.get("completions_per_s")), "bold green"),
        ]
        text = Text()
        for label, value, style in parts:
            if value:
                text.append(label, style="grey70")
                text.append(value, style=style)
        if self.filter_text:
            text.append(f"   filter: {self.filter_text!r}", style="italic yellow")
        return text

    def _render_header(self) -> None:
        if self.screen_stack:
            self.screen_stack[0].query_one("#header", Static).update(self.header_text())

    # -- actions -------------------------------------------------------------------------
    def action_toggle_pause(self) -> None:
        """Freeze or unfreeze the screen; the feed keeps reading either way."""
        self.paused = not self.paused
        self.refresh_view()

    def action_cycle_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self.refresh_view()

    def action_open_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_close_filter(self) -> None:
        """Escape: close the filter box and clear the filter."""
        box = self.query_one("#filter", Input)
        if box.display or self.filter_text:
            box.value = ""
            self.filter_text = ""
            box.display = False
            self.query_one(WorkersTable).focus()
            self.refresh_view()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.refresh_view()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one(WorkersTable).focus()

    @on(DataTable.RowSelected, "#workers")
    def _row_selected(self) -> None:
        self.action_details()

    def action_details(self) -> None:
        """Open the details modal for the worker under the cursor (nothing if none)."""
        instance = self.query_one(WorkersTable).selected_instance()
        worker = next((w for w in self.visible_workers() if w["instance"] == instance), None)
        if worker is not None:
            self.push_screen(DetailsScreen(worker))
