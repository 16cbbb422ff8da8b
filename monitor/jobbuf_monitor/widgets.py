"""Widgets and cell formatting for the monitor. Pure presentation: no I/O, no feed state.

Every formatter returns a ``rich.text.Text`` and never raises on missing or ``None`` values
(a worker that has not published stats yet shows zeros and dashes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Sparkline, Static

__all__ = [
    "DetailsScreen",
    "QueuesTable",
    "Trend",
    "WorkersTable",
    "depth_bar",
    "fmt_age",
    "fmt_count",
    "state_text",
]

STATE_STYLE: dict[str, tuple[str, str]] = {
    "live": ("● live", "bold green"),
    "stale": ("◐ STALE", "bold yellow"),
    "gone": ("✖ GONE", "bold red"),
}


def fmt_age(seconds: float | None) -> str:
    """``1.2s``, ``4m05s``, ``2h03m``, ``3d04h``; a dash for ``None``."""
    if seconds is None:
        return "—"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def fmt_count(value: Any, style: str = "") -> Text:
    """A right-aligned count with thousands separators (``0`` dimmed)."""
    n = int(value or 0)
    return Text(f"{n:,}", style=style if n else "dim", justify="right")


def fmt_rate(value: float | None) -> str:
    """A rate per second, compact (``1.2k``)."""
    v = float(value or 0.0)
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.1f}"


def depth_bar(depth: Any, capacity: Any, width: int = 8) -> Text:
    """``█████░░░░░  25/50``: the buffer's fill, coloured by how full it is."""
    d, c = int(depth or 0), int(capacity or 0)
    frac = min(1.0, d / c) if c > 0 else 0.0
    filled = round(frac * width)
    colour = "green" if frac >= 0.5 else "yellow" if frac >= 0.2 else "red" if d == 0 and c else "dark_orange"
    text = Text("█" * filled, style=colour)
    text.append("░" * (width - filled), style="grey35")
    text.append(f" {d}/{c}", style="bold" if d else "dim")
    return text


def state_text(state: str) -> Text:
    """The worker state as coloured text: ``live`` green, ``STALE`` yellow, ``GONE`` red."""
    label, style = STATE_STYLE.get(state, (state, "magenta"))
    return Text(label, style=style)


class WorkersTable(DataTable[Any]):
    """One row per buffer instance (row key = instance); keeps the cursor on the same instance."""

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "Worker", "Host:pid", "State", "Depth", "Claimed", "Taken", "Discard",
        "Release", "Done", "Failed", "PollErr", "Beat",
    )  # fmt: skip
    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Details", key_display="⏎")]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self._shown_keys: list[str] = []
        self._shown_cells: list[list[Any]] = []
        for label in self.COLUMNS:
            self.add_column(label, key=label)

    def show(self, workers: Sequence[dict[str, Any]]) -> None:
        """Show ``workers`` (already sorted and filtered).

        When the rows are the same instances in the same order, only the cells whose
        text changed are updated: a full rebuild of 50 rows on every refresh is what
        makes a busy dashboard lag behind key presses.
        """
        keys = [w["instance"] for w in workers]
        cells = [self._cells(w) for w in workers]
        if keys == self._shown_keys:
            for key, new, old in zip(keys, cells, self._shown_cells, strict=True):
                for column, value, before in zip(self.COLUMNS, new, old, strict=True):
                    if str(value) != str(before) or getattr(value, "style", None) != getattr(before, "style", None):
                        self.update_cell(key, column, value, update_width=True)
            self._shown_cells = cells
            return
        selected = self.selected_instance()
        self.clear()
        for key, row in zip(keys, cells, strict=True):
            self.add_row(*row, key=key)
        self._shown_keys, self._shown_cells = keys, cells
        index = next((i for i, key in enumerate(keys) if key == selected), None)
        if index is not None:
            self.move_cursor(row=index, animate=False)

    def selected_instance(self) -> str | None:
        """The instance under the cursor, or None when the table is empty."""
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # CellDoesNotExist: the cursor points past the last row
            return None
        return None if key.value is None else str(key.value)

    @staticmethod
    def _cells(w: dict[str, Any]) -> list[Any]:
        gone = w["state"] == "gone"
        dim = "dim" if gone else ""
        beat_style = {"live": "green", "stale": "bold yellow", "gone": "bold red"}.get(w["state"], "")
        return [
            Text(str(w["worker_id"]), style="bold " + dim),
            Text(f"{w['host']}:{w['pid']}", style=dim or "grey70"),
            state_text(w["state"]),
            depth_bar(w.get("depth"), w.get("capacity")),
            fmt_count(w.get("claimed"), dim),
            fmt_count(w.get("taken"), dim),
            fmt_count(w.get("discarded"), "bold dark_orange"),
            fmt_count(w.get("released"), dim),
            fmt_count(w.get("completed"), "green"),
            fmt_count(w.get("failed"), "yellow"),
            fmt_count(w.get("poll_errors"), "bold red"),
            Text(fmt_age(w.get("heartbeat_age")), justify="right", style=beat_style),
        ]


class QueuesTable(DataTable[Any]):
    """One row per queue: pending, scheduled, claimed, dead, oldest pending age."""

    COLUMNS: ClassVar[tuple[str, ...]] = ("Queue", "Pending", "Scheduled", "Claimed", "Dead", "Done", "Oldest pending")

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.zebra_stripes = True
        for label in self.COLUMNS:
            self.add_column(label, key=label)

    def show(self, queues: Sequence[dict[str, Any]]) -> None:
        """Replace the rows with ``queues``."""
        self.clear()
        for q in queues:
            age = q.get("oldest_pending_age")
            age_style = "bold red" if age and age > 60 else "yellow" if age and age > 5 else ""
            self.add_row(
                Text(str(q["queue"]), style="bold"),
                fmt_count(q.get("pending"), "bold cyan"),
                fmt_count(q.get("scheduled"), "blue"),
                fmt_count(q.get("claimed"), "green"),
                fmt_count(q.get("dead"), "bold red"),
                fmt_count(q.get("done")),
                Text(fmt_age(age), justify="right", style=age_style or "dim"),
                key=str(q["queue"]),
            )


class Trend(Vertical):
    """A titled sparkline; :meth:`push` sets its data and the current-value caption."""

    def __init__(self, title: str, *, id: str) -> None:
        super().__init__(id=id, classes="trend")
        self.title = title

    def compose(self) -> ComposeResult:
        yield Label(self.title, classes="trend-title")
        yield Sparkline([], summary_function=max)

    def push(self, values: Sequence[float], caption: str) -> None:
        """Show ``values`` (oldest first) with ``caption`` as the current value."""
        self.query_one(Label).update(Text.assemble((self.title, "bold"), "  ", (caption, "bold cyan")))
        # A leading zero anchors the scale at 0 (Sparkline scales min..max of its data), so a
        # steady series reads as steady, not as "full"; no data draws a flat line.
        self.query_one(Sparkline).data = [0.0, *values] if values else []


_COUNTERS = ("claimed", "taken", "offered", "discarded", "released", "completed", "failed", "dead",
             "quarantined", "lease_lost", "polls", "empty_polls", "poll_errors")  # fmt: skip


def _grid(out: Text, items: Sequence[tuple[str, str]], *, columns: int, width: int) -> None:
    """Append ``name value`` pairs to ``out``, ``columns`` to a line, each ``width`` wide."""
    for i, (name, value) in enumerate(items):
        out.append(f"  {name} ", style="grey70")
        out.append(value.ljust(max(1, width - len(name) - 3)), style="bold")
        if i % columns == columns - 1 or i == len(items) - 1:
            out.append("\n")


class DetailsScreen(ModalScreen[None]):
    """A modal with one worker's last error, config, uptime, queues and counters."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "dismiss_details", "Close"),
    ]

    def __init__(self, worker: dict[str, Any]) -> None:
        super().__init__()
        self.worker = worker

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="details"):
            yield Static(self._render_worker(), id="details-body")

    def on_mount(self) -> None:
        self.query_one("#details").border_title = f"worker {self.worker['worker_id']}"
        self.query_one("#details").border_subtitle = "esc to close"

    def action_dismiss_details(self) -> None:
        self.dismiss(None)

    def _render_worker(self) -> Text:
        w = self.worker
        out = Text()

        def row(label: str, value: str | Text, style: str = "") -> None:
            out.append(f"{label:<14}", style="bold grey70")
            out.append(value if isinstance(value, Text) else Text(value, style=style))
            out.append("\n")

        row("state", state_text(w["state"]))
        row("instance", str(w["instance"]))
        row("host:pid", f"{w['host']}:{w['pid']}")
        row("uptime", fmt_age(w.get("uptime")))
        row("heartbeat", f"{fmt_age(w.get('heartbeat_age'))} ago")
        row("queues", ", ".join(w.get("queues") or []) or "—")
        row("depth", depth_bar(w.get("depth"), w.get("capacity"), width=20))
        row("in flight", str(w.get("in_flight") or 0))
        error = w.get("last_error")
        row("last error", str(error) if error else "none", "bold red" if error else "green")
        out.append("\ncounters\n", style="bold underline")
        _grid(out, [(key, f"{int(w.get(key) or 0):,}") for key in _COUNTERS], columns=3, width=24)
        out.append("\nconfig\n", style="bold underline")
        config = w.get("config")
        if isinstance(config, dict) and config:
            _grid(out, [(k, json.dumps(v)) for k, v in sorted(config.items())], columns=2, width=36)
        else:
            out.append("  (not published)\n", style="dim")
        return out
