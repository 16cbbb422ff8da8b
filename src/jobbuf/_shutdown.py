"""What happens when a buffer's ``run`` ends: nothing it holds may be stranded."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ._errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from ._buffer import JobBuffer
    from ._job import Job

__all__ = ["shutdown"]

log = logging.getLogger("jobbuf.buffer")


async def shutdown(buf: JobBuffer) -> None:
    """Flush pending acks, then release everything ``buf``'s instance still owns, then
    deregister it: shielded from cancellation, by the buffer's exit deadline
    (``config.shutdown_timeout`` after ``run`` was cancelled, shared with the claims that
    were still in flight then).

    The release is by owner, not only by the ids the buffer knows: a claim cancelled
    mid-statement may have committed rows it never saw. Jobs handed off with
    ``stop(release=False)`` are excluded; jobs held under another instance's claim
    (offered in) are released by that claim. If the database cannot be reached in time,
    raises one :class:`DatabaseUnavailableError` naming the unreleased job ids; they
    return to pending when their lease expires.
    """
    buf._exiting = True  # from here on the exit owns what the buffer holds: stop() hands out nothing
    cfg, source, instance = buf.config, buf._source, buf._instance
    failure: BaseException | None = None
    held: list[Job] | None = None  # read once the waits below end (else at the end)
    exit_deadline = min(buf._exit_deadline, trio.current_time() + cfg.shutdown_timeout)
    buf._acks.add_cutoff(exit_deadline)  # a flush the drain leads must end by it too
    with trio.CancelScope(shield=True):
        with trio.CancelScope(deadline=exit_deadline) as deadline:
            try:
                # A stop() releasing right now puts what it could not release back into the
                # books, and acks already submitted land: both before the books are read.
                await buf._stop_drained.wait()
                await buf._acks.drain()
                held = buf._held(unconfirmed=True)
                foreign = [j for j in held if j.claim is not None and j.claim.owner != instance]
                buf._entries.clear()
                buf._discarded = []
                released = await source.release_owner(instance, keep=buf._handed_off)
                held = foreign  # the rest were this instance's own claims: released now
                if foreign:
                    released += await source.release(foreign)
                buf._counters.released += len(released)
                buf._in_flight.clear()
                buf._unconfirmed.clear()
                held = []
                await source.deregister(instance)
            except Exception as exc:
                failure = exc
            finally:
                buf._acks.remove_cutoff(exit_deadline)
        buf._state = "closed"
        if held is None:
            held = buf._held(unconfirmed=True)
        if held and (failure is not None or deadline.cancelled_caught):
            timed_out = f"no answer within shutdown_timeout ({cfg.shutdown_timeout:g}s)"
            reason = f"{failure}" if failure is not None else timed_out
            raise DatabaseUnavailableError(
                f"buffer {buf.worker_id!r} could not release {_some_ids(held)} ({reason}); they return to "
                f"pending when their lease expires (at most {cfg.lease:g}s)"
            ) from failure
        if failure is not None or deadline.cancelled_caught:
            log.warning("jobbuf buffer %r: deregistration failed: %s", buf.worker_id, failure or "timeout")


def _some_ids(jobs: list[Job], shown: int = 20) -> str:
    """``jobs [1, 2, 3]``, or the first ``shown`` ids and how many more (a buffer may hold thousands)."""
    ids = sorted({j.id for j in jobs})
    if len(ids) <= shown:
        return f"jobs {ids}"
    return f"{len(ids)} jobs ({', '.join(map(str, ids[:shown]))} and {len(ids) - shown} more)"
