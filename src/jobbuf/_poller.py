"""The buffer's background tasks: the poller (claims, TTL sweep, releases) and the heartbeat."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._buffer import JobBuffer

__all__ = ["heartbeat_loop", "poll_loop"]

log = logging.getLogger("jobbuf.buffer")
ERROR_BACKOFF_MAX = 5.0


def _jitter(seconds: float, spread: float = 0.1) -> float:
    return seconds * random.uniform(1 - spread, 1 + spread)


async def poll_loop(buf: JobBuffer) -> None:
    """Refill the buffer until stopped or cancelled.

    Each round: release TTL-discarded entries, sweep stale ones, and while depth <
    low_water claim up to ``min(batch_size, free capacity)`` rows. Then sleep until woken
    (NOTIFY, a take crossing the low-water mark, a discard, stop) or until the jittered
    ``poll_interval`` or the next TTL expiry passes. Errors are counted in stats, logged,
    and retried with exponential backoff and jitter; they never end the loop.
    """
    failures = 0
    while not buf._stopping:
        buf._wake = wake = trio.Event()  # reset first: a wake during the round is kept
        try:
            await buf._release_discarded()
            buf._sweep_stale()
            while not buf._stopping and buf._want_claim():
                if not await buf._claim_once():
                    break
            failures = 0
        except Exception as exc:
            failures += 1
            buf._record_error("poll", exc)
            await trio.sleep(_jitter(min(ERROR_BACKOFF_MAX, 0.1 * 2 ** (failures - 1)), 0.5))
            continue
        with trio.move_on_after(min(_jitter(buf.config.poll_interval), buf._next_expiry())):
            await wake.wait()


async def heartbeat_loop(buf: JobBuffer) -> None:
    """Publish stats every ``stats_interval`` and extend held leases every
    ``heartbeat_interval``, in one source call per tick. Failures are counted and retried
    at the next tick; a lease missed for longer than ``lease`` may be rescued by others,
    which is what makes a later ack of that job raise ``LeaseLostError``."""
    cfg = buf.config
    tick = min(cfg.stats_interval, cfg.heartbeat_every)
    next_extension = trio.current_time() + cfg.heartbeat_every
    while True:
        await trio.sleep(tick)
        started = trio.current_time()
        extend = started >= next_extension - tick / 2
        try:
            await buf._publish(extend_leases=extend)
        except Exception as exc:
            buf._record_error("heartbeat", exc)
            continue
        if extend:
            buf._leases_extended_at = started  # the new leases count from before the call
            next_extension = trio.current_time() + cfg.heartbeat_every
