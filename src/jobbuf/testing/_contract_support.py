"""Shared pieces of the source contract suite (private; see :mod:`jobbuf.testing.contract`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import trio

from .._source import ClaimResult, JobSource, JobState

__all__ = ["TIMEOUT", "ContractOptions", "claim", "claim_until", "past", "row_state"]

TIMEOUT = 10.0


def past(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


async def claim(
    source: JobSource,
    owner: str = "owner-a",
    *,
    limit: int = 10,
    lease: float = 30.0,
    queues: tuple[str, ...] = ("default",),
    default_max_attempts: int = 20,
) -> ClaimResult:
    return await source.claim(
        owner=owner,
        worker_id=f"worker-{owner}",
        queues=queues,
        limit=limit,
        lease=lease,
        default_max_attempts=default_max_attempts,
    )


async def row_state(source: JobSource, job_id: int) -> JobState:
    [state] = await source.job_states([job_id])
    return state


async def claim_until(source: JobSource, owner: str, lease: float, done: Callable[[ClaimResult], bool]) -> ClaimResult:
    """Claim every 50 ms until ``done(result)``; the caller's fail_after bounds it."""
    while True:
        result = await claim(source, owner, lease=lease)
        if done(result):
            return result
        await trio.sleep(0.05)


class ContractOptions:
    """Class attributes a :class:`~jobbuf.testing.SourceContract` subclass may override."""

    lease: float = 0.3
    """Short real lease, in seconds, for the lease-expiry tests (raise it for a slow database)."""
    keeps_completed: bool = False
    """Set when the source keeps completed rows as ``done`` instead of deleting them."""
