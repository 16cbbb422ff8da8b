"""Group commit of acks: concurrent ``complete``/``fail`` calls share one statement."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from ._errors import DatabaseUnavailableError
from ._source import Ack, AckOutcome

__all__ = ["AckBatcher", "OnAcked"]

log = logging.getLogger("jobbuf.acks")

OnAcked = Callable[[Ack, "AckOutcome | None", "BaseException | None"], None]
"""Called (synchronously, must not raise) with an ack queued by ``submit_nowait`` once its
flush ended: with its outcome, or with the error that kept it from being confirmed."""


class _AckSink(Protocol):
    async def ack(self, acks: Sequence[Ack], *, default_max_attempts: int) -> list[AckOutcome]: ...


class _Item:
    __slots__ = ("ack", "error", "flushed", "on_acked", "outcome")

    def __init__(self, ack: Ack, on_acked: OnAcked | None = None) -> None:
        self.ack = ack
        self.on_acked = on_acked
        self.outcome: AckOutcome | None = None
        self.error: BaseException | None = None
        self.flushed: trio.Event | None = None  # set when the flush carrying it ends


class AckBatcher:
    """Leader/follower group commit, pipelined under load.

    A caller whose ack finds no flush in progress becomes the leader and flushes every ack
    queued so far in one ``source.ack`` call; acks that arrive meanwhile wait and form the
    next batch. So a lone ack pays one round trip and N concurrent acks pay about two.
    Under load, once ``pipeline_batch`` acks are waiting, another flush may start while
    earlier ones are in flight (at most ``max_flushes`` at once, each on its own pooled
    connection), so throughput is not capped at one batch per round trip.

    ``submit_nowait`` queues an ack without waiting for it; :meth:`pump` (run in a
    nursery) then leads the flushes, and the ack's callback reports the outcome. That is
    how ``run_workers`` lets a worker take its next job while its last ack commits.

    Guarantees: ``submit`` returns only once its ack is durable (or raises). A flush is
    shielded from cancellation and bounded by ``deadline`` seconds, so the acks of other
    callers in the same batch never depend on the leader staying alive. A caller cancelled
    before its ack joined a flush withdraws it (nothing applied); one cancelled later may
    or may not have been applied. Acks of different jobs commute, so concurrent flushes
    may commit in any order; two acks of one job in one batch are applied in order.
    """

    def __init__(
        self,
        source: _AckSink,
        default_max_attempts: int,
        deadline: float,
        *,
        max_flushes: int = 4,
        pipeline_batch: int = 32,
    ) -> None:
        self._source = source
        self._default_max_attempts = default_max_attempts
        self._deadline = deadline
        self._max_flushes = max_flushes
        self._pipeline_batch = pipeline_batch
        self._queue: list[_Item] = []
        self._in_flight = 0
        # Wakes who may lead the next flush (queued callers, the pump) when a flush ends or
        # a nowait ack arrives; callers whose ack is in a flush wait on that flush's event.
        self._changed = trio.Event()
        self.flushes = 0
        self._cutoffs: list[float] = []  # see add_cutoff

    @property
    def pending(self) -> int:
        """Acks queued and not yet in a flush."""
        return len(self._queue)

    def _may_flush(self) -> bool:
        if not self._queue:
            return False
        if self._in_flight == 0:
            return True
        return self._in_flight < self._max_flushes and len(self._queue) >= self._pipeline_batch

    def _signal(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def submit(self, ack: Ack, on_abandoned: OnAcked | None = None) -> AckOutcome:
        """Apply ``ack`` durably, batched with concurrent callers; return its outcome.

        If the caller is cancelled after its ack joined a flush, the flush goes on without
        it and ``on_abandoned`` reports the ack's fate when it ends (as for ``submit_nowait``)."""
        item = _Item(ack)
        self._queue.append(item)
        try:
            while item.outcome is None and item.error is None:
                if item.flushed is not None:
                    await item.flushed.wait()
                elif self._may_flush():
                    await self._flush(*self._take_batch())
                else:
                    await self._changed.wait()
        except BaseException:
            if item.flushed is None:  # never reached a flush: withdraw it
                self._queue.remove(item)
            elif on_abandoned is not None:
                if item.outcome is None and item.error is None:
                    item.on_acked = on_abandoned  # the flush reports it when it ends
                else:  # it ended between our cancellation and now
                    _report(on_abandoned, item)
            raise
        if item.error is not None:
            raise item.error
        assert item.outcome is not None
        return item.outcome

    def submit_nowait(self, ack: Ack, on_acked: OnAcked) -> None:
        """Queue ``ack`` for the next flush led by :meth:`pump` (or a waiting caller)."""
        queue = self._queue
        queue.append(_Item(ack, on_acked))
        # Signal only when this ack makes a flush possible; past that point the pump is
        # already awake (or a flush ending will signal), and a signal per ack would cost
        # an Event per ack.
        n = len(queue)
        if (n == 1 and self._in_flight == 0) or (n == self._pipeline_batch and self._in_flight < self._max_flushes):
            self._signal()

    async def pump(self) -> None:
        """Lead flushes of queued acks until cancelled (flushes in progress still finish:
        they are shielded). Run it in a nursery next to the tasks using ``submit_nowait``."""
        async with trio.open_nursery() as nursery:
            while True:
                if self._may_flush():
                    nursery.start_soon(self._flush, *self._take_batch())
                    await trio.lowlevel.checkpoint()
                else:
                    await self._changed.wait()

    def add_cutoff(self, at: float) -> None:
        """Until :meth:`remove_cutoff`, flushes that start end by trio time ``at`` at the
        latest, not ``deadline`` after they start: a cleanup must not wait for a flush
        that began just before its own deadline. (Flushes already in flight end first.)"""
        self._cutoffs.append(at)

    def remove_cutoff(self, at: float) -> None:
        self._cutoffs.remove(at)

    async def wait_for_flush(self) -> None:
        """Wait until a flush ends (or a nowait ack makes one possible)."""
        await self._changed.wait()

    async def drain(self) -> None:
        """Flush everything queued and wait for every flush in progress."""
        while self._in_flight or self._queue:
            if self._queue and self._in_flight < self._max_flushes:
                await self._flush(*self._take_batch())
            else:
                await self._changed.wait()

    def _take_batch(self) -> tuple[list[_Item], trio.Event]:
        batch, self._queue = self._queue, []
        flushed = trio.Event()
        for item in batch:
            item.flushed = flushed
        self._in_flight += 1
        return batch, flushed

    async def _flush(self, batch: list[_Item], flushed: trio.Event) -> None:
        try:
            own = trio.current_time() + (self._deadline if self._deadline > 0 else math.inf)
            deadline = min([own, *self._cutoffs])
            with trio.CancelScope(shield=True):
                with trio.CancelScope(deadline=deadline) as scope:
                    outcomes = await self._source.ack(
                        [item.ack for item in batch], default_max_attempts=self._default_max_attempts
                    )
                if scope.cancelled_caught:
                    within = f"within {self._deadline:g}s" if deadline == own else "by the shutdown deadline"
                    raise DatabaseUnavailableError(f"ack not confirmed {within}")
            for item, outcome in zip(batch, outcomes, strict=True):
                item.outcome = outcome
        except Exception as exc:
            for item in batch:
                item.error = exc
        finally:
            self.flushes += 1
            self._in_flight -= 1
            flushed.set()  # first: waiters must never depend on a callback behaving
            self._signal()
            for item in batch:
                if item.on_acked is not None:
                    _report(item.on_acked, item)


def _report(on_acked: OnAcked, item: _Item) -> None:
    try:
        on_acked(item.ack, item.outcome, item.error)
    except Exception:
        log.exception("jobbuf: ack callback failed")
