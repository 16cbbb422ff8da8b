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


_new = object.__new__
(
    _set_id,
    _set_queue,
    _set_payload,
    _set_priority,
    _set_attempts,
    _set_max_attempts,
    _set_run_at,
    _set_created_at,
    _set_claim,
) = (
    Job.__dict__[f].__set__
    for f in ("id", "queue", "payload", "priority", "attempts", "max_attempts", "run_at", "created_at", "claim")
)


def claimed_job(
    id: int,
    queue: str,
    payload: Any,
    priority: int,
    attempts: int,
    max_attempts: int,
    run_at: datetime,
    created_at: datetime,
    claim: Claim,
) -> Job:
    """``Job(...)`` with every field given, for decoders of claimed rows: the same value,
    built in about 40% of the time (it sets the slots directly instead of calling the frozen
    dataclass ``__init__``, which goes through ``object.__setattr__`` per field)."""
    job = _new(Job)
    _set_id(job, id)
    _set_queue(job, queue)
    _set_payload(job, payload)
    _set_priority(job, priority)
    _set_attempts(job, attempts)
    _set_max_attempts(job, max_attempts)
    _set_run_at(job, run_at)
    _set_created_at(job, created_at)
    _set_claim(job, claim)
    return job
