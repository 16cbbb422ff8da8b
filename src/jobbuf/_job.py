"""The :class:`Job` value and the claim it carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Claim", "Job"]


@dataclass(frozen=True, slots=True)
class Claim:
    """Proof of ownership of a claimed job: the owning buffer instance and a per-claim token.

    Acks, releases and lease extensions are applied only while the job's row still carries
    this exact claim, so a stale owner can never overwrite a newer owner's state.
    """

    owner: str
    token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One job, as claimed from a source or built by hand.

    ``attempts`` counts deliveries including the current one. A job built by hand carries
    no :class:`Claim`; acking it only counts in the buffer's stats.
    """

    id: int
    queue: str
    payload: Any
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 20
    run_at: datetime | None = None
    created_at: datetime | None = None
    claim: Claim | None = field(default=None, repr=False, compare=False)
