"""Group commit of acks: concurrent ``complete``/``fail`` calls share one statement."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import trio

from ._errors import DatabaseUnavailableError
from ._source import Ack, AckOutcome

__all__ = ["AckBatcher"]


class _AckSink(Protocol):
    async def ack(self, acks: Sequence[Ack], *, default_max_attempts: int) -> list[AckOutcome]: ...


class _Item:
    __slots__ = ("ack", "error", "outcome")

    def __init__(self, ack: Ack) -> None:
        self.ack = ack
        self.outcome: AckOutcome | None = None
        self.error: BaseException | None = None


class AckBatcher:
    """Leader/follower group commit.

    A caller whose ack finds no flush in progress becomes the leader and flushes every ack
    queued so far in one ``source.ack`` call; acks that arrive meanwhile wait and form the
    next batch. So a lone ack pays one round trip and N concurrent acks pay about two.

    Guarantees: ``submit`` returns only once its ack is durable (or raises). A flush is
    shielded from cancellation and bounded by ``deadline`` seconds, so the acks of other
    callers in the same batch never depend on the leader staying alive. A caller cancelled
    before its ack joined a flush withdraws it (nothing applied); one cancelled later may
    or may not have been applied.
    """

    def __init__(self, source: _AckSink, default_max_attempts: int, deadline: float) -> None:
        self._source = source
        self._default_max_attempts = default_max_attempts
        self._deadline = deadline
        self._queue: list[_Item] = []
        self._flushing: trio.Event | None = None
        self.flushes = 0

    async def submit(self, ack: Ack) -> AckOutcome:
        """Apply ``ack`` durably, batched with concurrent callers; return its outcome."""
        item = _Item(ack)
        self._queue.append(item)
        try:
            while item.outcome is None and item.error is None:
                if self._flushing is not None:
                    await self._flushing.wait()
                else:
                    await self._flush()
        except BaseException:
            if item in self._queue:  # never reached a flush: withdraw it
                self._queue.remove(item)
            raise
        if item.error is not None:
            raise item.error
        assert item.outcome is not None
        return item.outcome

    async def drain(self) -> None:
        """Flush everything queued and wait for any flush in progress."""
        while self._flushing is not None or self._queue:
            if self._flushing is not None:
                await self._flushing.wait()
            else:
                await self._flush()

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        done = self._flushing = trio.Event()
        try:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._deadline if self._deadline > 0 else math.inf) as scope:
                    outcomes = await self._source.ack(
                        [item.ack for item in batch], default_max_attempts=self._default_max_attempts
                    )
                if scope.cancelled_caught:
                    raise DatabaseUnavailableError(f"ack not confirmed within {self._deadline:g}s")
            for item, outcome in zip(batch, outcomes, strict=True):
                item.outcome = outcome
        except Exception as exc:
            for item in batch:
                item.error = exc
        finally:
            self.flushes += 1
            self._flushing = None
            done.set()
