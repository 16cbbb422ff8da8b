"""The buffer's background tasks: the poller (claims, TTL sweep, releases) and the heartbeat."""

from __future__ import annotations

import heapq
import logging
import math
from typing import TYPE_CHECKING

import trio

from . import _jitter

if TYPE_CHECKING:
    from ._buffer import JobBuffer

__all__ = ["heartbeat_loop", "poll_loop"]

log = logging.getLogger("jobbuf.buffer")
ERROR_BACKOFF_MAX = 5.0


def _jittered(seconds: float, spread: float = 0.1) -> float:
    return seconds * _jitter.uniform(1 - spread, 1 + spread)


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
    discard, a release, stop; and, when a round could not claim for claims in flight, the
    last of them landing, since their rows were chosen before the wake-up) or until the
    jittered ``poll_interval``, a retry of a job this buffer failed falling due, or the next
    TTL expiry passes;
    a TTL wake-up only sweeps (and an empty buffer's TTL timer runs every min(ttl, 0.8 x
    lease), so entries that arrive meanwhile are swept on time without extra polls; during
    a backoff too, since a sweep needs no database).
    Errors are counted in stats, logged, and retried with exponential backoff and jitter;
    they never end the loop. A claim that failed may still have committed (a reply lost
    with its connection, or cut off by its deadline): its rows are claimed by this buffer,
    which never saw them. So after a failed claim, the first round that ends with no claim
    in flight, once the database has answered again (a claim or a heartbeat worked),
    releases every row this buffer's instance holds in the source but not in its books
    (``release_owner`` with everything it knows of as ``keep``), and wakes the loop to
    claim them again. Stopped, it waits for its claims in flight to land.
    """
    await _Poller(buf).run()


class _Poller:
    """The state of one buffer's poll loop (see :func:`poll_loop`)."""

    def __init__(self, buf: JobBuffer) -> None:
        self.buf = buf
        self.failures = 0
        self.in_flight = 0  # claims
        self.retry_at = -math.inf  # backing off after an error until then
        self.probing = True  # the last claim came back short: one claim at a time until one is full
        self.next_poll = 0.0  # when the next round claims even if nothing wakes the poller
        self.orphans = False  # a claim failed: rows it committed may be claimed unseen
        self.failed_at = -math.inf  # when the last round (or claim) failed
        self.deferred = False  # a round could not claim for claims in flight: the last to land wakes
        # Only a batch_size below low_water can leave room for a second claim (see
        # _claim_limit); otherwise the claim runs inline, without a task to schedule first.
        self.pipelined = buf.config.claim_size < buf.config.low_water

    async def run(self) -> None:
        buf = self.buf
        sweep_only = False  # woken by the TTL timer alone: sweep (a discard wakes again), no claim
        async with trio.open_nursery() as claims:
            while not buf._stopping:
                buf._wake = wake = trio.Event()  # reset first: a wake during the round is kept
                if trio.current_time() >= self.retry_at:
                    try:
                        await buf._release_discarded()
                        buf._sweep_stale()
                        if not sweep_only:
                            await self._claim_round(claims)
                        if self.orphans and not self.in_flight and self._answered_since_failure():
                            await buf._release_unseen()
                            self.orphans = False
                    except Exception as exc:
                        self._failed(exc)
                else:  # backing off: stale entries still leave on time (no database needed)
                    buf._sweep_stale()
                sweep_only = await self._sleep(wake)

    def _answered_since_failure(self) -> bool:
        """Whether the database has answered since the last failure (a claim worked, or
        a heartbeat did): only then is the release of unseen rows tried, since during an
        outage it would retry for retry_timeout instead of backing off."""
        return not self.failures or self.buf._answered_at > self.failed_at

    async def _claim_round(self, claims: trio.Nursery) -> None:
        buf = self.buf
        now = trio.current_time()
        self.next_poll = now + _jittered(buf.config.poll_interval)
        while buf._retries and buf._retries[0] <= now:  # due: this round claims them
            heapq.heappop(buf._retries)
        started = False
        while not buf._stopping and self.in_flight < MAX_CLAIMS and (limit := buf._claim_limit()):
            if self.probing and self.in_flight:
                break  # an idle queue gets one claim per wake-up, not MAX_CLAIMS
            buf._claiming += limit
            self.in_flight += 1
            started = True
            if self.pipelined:
                claims.start_soon(self._claim, limit)
            elif not await self._claim(limit):
                break  # short (or failed): nothing more ready for now
        if self.in_flight and not started and len(buf._entries) < buf.config.low_water:
            # Woken (a NOTIFY, say) while claims are in flight, this round claimed nothing:
            # their snapshots may predate what woke it, and a short one wakes nobody. So
            # the last of them to land wakes the loop again.
            self.deferred = True

    async def _claim(self, limit: int) -> bool:
        """One claim; whether it came back full (more may be ready: then it wakes the loop)."""
        try:
            full = await self.buf._claim_once(limit)
            self.failures, self.probing = 0, not full
            if full:
                self.buf._wake.set()
            return full
        except Exception as exc:
            self.orphans = True
            self._failed(exc)
            return False
        finally:
            self.buf._claiming -= limit
            self.in_flight -= 1
            if self.deferred and not self.in_flight:
                self.deferred = False
                self.buf._wake.set()

    def _failed(self, exc: Exception) -> None:
        self.failures, self.failed_at = self.failures + 1, trio.current_time()
        self.buf._record_error("poll", exc)
        backoff = _jittered(min(ERROR_BACKOFF_MAX, 0.1 * 2 ** (self.failures - 1)), 0.5)
        self.retry_at = trio.current_time() + backoff
        self.buf._wake.set()  # the loop's next sleep ends at retry_at

    async def _sleep(self, wake: trio.Event) -> bool:
        """Sleep until woken, the next poll, the end of a backoff, the next TTL expiry or
        the next retry of a job this buffer failed falling due (``JobBuffer._retry_due_in``
        moves the deadline earlier while it sleeps); return whether the TTL timer alone
        ended it (the next round then only sweeps)."""
        buf = self.buf
        now = trio.current_time()
        # When the next round claims: backing off, not before the backoff ends.
        claim_at = self.retry_at if self.retry_at > now else min(self.next_poll, self._next_retry())
        with trio.move_on_at(min(claim_at, now + buf._next_expiry())) as timer:
            buf._poll_timer = timer
            try:
                await wake.wait()
            finally:
                buf._poll_timer = None
        return timer.cancelled_caught and not wake.is_set() and trio.current_time() < min(claim_at, self._next_retry())

    def _next_retry(self) -> float:
        return self.buf._retries[0] if self.buf._retries else math.inf


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
        buf._answered_at = started
        if extend:
            buf._leases_extended_at = started  # the new leases count from before the call
            next_extension = trio.current_time() + cfg.heartbeat_every
