"""``BufferStats``: a frozen snapshot of one buffer's counters."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["BufferStats", "Counters", "rates"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferStats:
    """A point-in-time snapshot. Counters count since start unless marked "now".

    Timestamps (``started_at``, ``last_claim_at``) are Unix epoch seconds. ``as_dict()``
    returns plain JSON types. No field ever contains a password.
    """

    worker_id: str
    instance: str
    running: bool
    capacity: int
    depth: int
    """Jobs buffered now."""
    in_flight: int
    """Jobs taken and not yet acked, now."""
    claimed: int = 0
    """Rows claimed from the source."""
    taken: int = 0
    """Jobs returned by ``take_job``."""
    offered: int = 0
    """Jobs accepted by ``offer_jobs``."""
    discarded: int = 0
    """Entries dropped for exceeding the TTL (and released)."""
    released: int = 0
    """Rows actually released back to pending."""
    completed: int = 0
    failed: int = 0
    """Failed acks that scheduled a retry or made the job dead."""
    dead: int = 0
    """Jobs this buffer made dead (failed out, rescued out, or quarantined)."""
    quarantined: int = 0
    """Claimed jobs whose payload could not be decoded (made dead, never handed out)."""
    lease_lost: int = 0
    """Acks rejected because another owner holds the job."""
    polls: int = 0
    """Claim statements run."""
    empty_polls: int = 0
    poll_errors: int = 0
    """Failed claim, release or heartbeat calls (the buffer backs off and retries)."""
    last_error: str | None = None
    last_claim_at: float | None = None
    started_at: float | None = None
    snapshot_at: float = 0.0
    """When this snapshot was taken (epoch seconds): rates are counter deltas over it."""

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-ready dict."""
        return {name: getattr(self, name) for name in _STATS_FIELDS}


@dataclass(slots=True)
class Counters:
    """The mutable counters behind :class:`BufferStats` (owned by one buffer, trio-only)."""

    claimed: int = 0
    taken: int = 0
    offered: int = 0
    discarded: int = 0
    released: int = 0
    completed: int = 0
    failed: int = 0
    dead: int = 0
    quarantined: int = 0
    lease_lost: int = 0
    polls: int = 0
    empty_polls: int = 0
    poll_errors: int = 0
    last_error: str | None = None
    last_claim_at: float | None = None
    started_at: float | None = None

    def values(self) -> dict[str, Any]:
        """Counter values keyed by ``BufferStats`` field name."""
        return {name: getattr(self, name) for name in _COUNTER_FIELDS}


# Plain field-name loops: dataclasses.asdict deep-copies and costs ~100 us per snapshot.
_STATS_FIELDS = tuple(f.name for f in fields(BufferStats))
_COUNTER_FIELDS = tuple(f.name for f in fields(Counters))


RATE_FIELDS = ("claimed", "taken", "discarded", "completed", "failed", "released")


def rates(before: BufferStats, after: BufferStats) -> dict[str, float]:
    """Per-second rates of the main counters between two snapshots of one buffer
    (derived from counter deltas, never estimated). Zero when no time passed."""
    elapsed = after.snapshot_at - before.snapshot_at
    if elapsed <= 0:
        return dict.fromkeys(RATE_FIELDS, 0.0)
    return {name: (getattr(after, name) - getattr(before, name)) / elapsed for name in RATE_FIELDS}
