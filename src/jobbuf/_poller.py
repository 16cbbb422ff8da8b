"""The buffer's background tasks: the poller (claims, TTL sweep, releases) and the heartbeat."""

from __future__ import annotations

import logging
import math
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


MAX_CLAIMS = 4
"""Most claim statements of one buffer in flight at once."""


async def poll_loop(buf: JobBuffer) -> None:
    """Refill the buffer until stopped or cancelled.

    Each round: release TTL-discarded entries, sweep stale ones, and start claims while
    depth plus the rows of claims in flight is below ``low_water`` (each asks for up to
    ``batch_size`` rows of the capacity not yet promised; at most ``MAX_CLAIMS`` at once).
    With the default ``batch_size == capacity`` that is one claim at a time, awaited right
    here; a smaller ``batch_size`` pipelines claims in tasks, so the database runs the next
    while this process decodes the last (each claim's rows are handed out in claim order,
    but the rows of concurrent claims may interleave, as between two buffers), and after a
    claim that came back short, one at a time again until one comes back full. Then sleep
    until woken (NOTIFY, a take crossing the low-water mark, a claim that came back full, a
    discard, stop) or until the jittered ``poll_interval`` or the next TTL expiry passes.
    Errors are counted in stats, logged, and retried with exponential backoff and jitter;
    they never end the loop. Stopped, it waits for its claims in flight to land.
    """
    failures = in_flight = 0
    retry_at = -math.inf
    probing = True  # the last claim came back short: one claim at a time until one is full

    def failed(exc: Exception) -> None:
        nonlocal failures, retry_at
        failures += 1
        buf._record_error("poll", exc)
        retry_at = trio.current_time() + _jitter(min(ERROR_BACKOFF_MAX, 0.1 * 2 ** (failures - 1)), 0.5)
        buf._wake.set()  # the loop's next wait ends at retry_at

    async def claim(limit: int) -> bool:
        """One claim; whether it came back full (more may be ready: then it wakes the loop)."""
        nonlocal failures, in_flight, probing
        try:
            full = await buf._claim_once(limit)
            failures, probing = 0, not full
            if full:
                buf._wake.set()
            return full
        except Exception as exc:
            failed(exc)
            return False
        finally:
            buf._claiming -= limit
            in_flight -= 1

    # Only a batch_size below low_water can leave room for a second claim (see
    # _claim_limit); otherwise the claim runs right here, without a task to schedule first.
    pipelined = buf.config.claim_size < buf.config.low_water
    async with trio.open_nursery() as claims:
        while not buf._stopping:
            buf._wake = wake = trio.Event()  # reset first: a wake during the round is kept
            if trio.current_time() >= retry_at:
                try:
                    await buf._release_discarded()
                    buf._sweep_stale()
                    while not buf._stopping and in_flight < MAX_CLAIMS and (limit := buf._claim_limit()):
                        if probing and in_flight:
                            break  # an idle queue gets one claim per wake-up, not MAX_CLAIMS
                        buf._claiming += limit
                        in_flight += 1
                        if pipelined:
                            claims.start_soon(claim, limit)
                        elif not await claim(limit):
                            break  # short (or failed): nothing more ready for now
                except Exception as exc:
                    failed(exc)
            now = trio.current_time()
            wait = min(_jitter(buf.config.poll_interval), buf._next_expiry())
            with trio.move_on_after(min(wait, retry_at - now) if retry_at > now else wait):
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
