"""``BufferConfig``: the validated, immutable configuration of a :class:`JobBuffer`."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from ._errors import ConfigError

__all__ = ["MAX_DELAY", "BufferConfig", "check_delay", "check_identifier"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


MAX_DELAY = 100 * 365 * 86400.0
"""The longest delay, in seconds, jobbuf accepts (100 years): a later time would overflow
the sources' clocks (PostgreSQL's intervals, Python's datetime)."""


def check_delay(name: str, value: object) -> float:
    """``value`` as float seconds if it is a real number (int, float, Fraction, NumPy's...)
    from 0 to :data:`MAX_DELAY`; else ``ConfigError`` naming ``name``."""
    seconds = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    if not 0 <= seconds <= MAX_DELAY:
        raise ConfigError(f"{name}={value!r} is invalid: pass seconds from 0 to {MAX_DELAY:.0f} (100 years)")
    return seconds


def check_identifier(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid name for a schema or queue, else raise ConfigError.

    Names follow SQL identifier rules (letter or underscore, then letters, digits and
    underscores, at most 63 characters), so they can be quoted safely.
    """
    if not isinstance(value, str) or _IDENTIFIER.fullmatch(value) is None:
        raise ConfigError(
            f"{kind}={value!r} is not a valid name: use 1-63 letters, digits or underscores, "
            "not starting with a digit (for example 'default' or 'emails_v2')"
        )
    return value


def _number(name: str, value: Any, *, integer: bool) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = "an int" if integer else "a number of seconds"
        raise ConfigError(f"BufferConfig.{name}={value!r} is invalid: it must be {expected}")
    if not math.isfinite(value):
        raise ConfigError(f"BufferConfig.{name}={value!r} is invalid: it must be finite")
    return float(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class BufferConfig:
    """How a buffer claims, holds and hands out jobs. Durations are float seconds.

    Validated on construction: a bad value raises :class:`ConfigError` naming the field, the
    value and the rule; an unknown option is a ``TypeError``. ``batch_size`` defaults to
    ``capacity`` and ``heartbeat_interval`` to ``lease / 3``; after construction both are
    always set, so ``dataclasses.replace`` keeps them even when it changes what they were
    derived from (pass them again).
    """

    capacity: int = 50
    """Most jobs held in the buffer at once."""
    low_water: int = 10
    """Refill when depth < low_water (``low_water == capacity`` keeps it topped up)."""
    batch_size: int | None = None
    """Most rows claimed by one statement (default: ``capacity``)."""
    poll_interval: float = 2.0
    """Idle re-poll period when no notification arrives (jittered by ±10%)."""
    ttl: float = 60.0
    """Entries buffered longer than this are discarded at take and released."""
    lease: float = 30.0
    """How long a claim holds without a heartbeat before another buffer may rescue it."""
    heartbeat_interval: float | None = None
    """How often leases are extended (default: ``lease / 3``)."""
    stats_interval: float = 1.0
    """How often the stats snapshot is published (at least every ``heartbeat_interval``:
    each lease extension publishes it too)."""
    max_attempts: int = 20
    """Default delivery limit for jobs enqueued without one."""
    queues: tuple[str, ...] = ("default",)
    """Queues this buffer claims from."""
    retry_base: float = 1.0
    """First retry delay after ``fail``; doubles per attempt (with jitter)."""
    retry_max: float = 3600.0
    """Cap on the retry delay."""
    shutdown_timeout: float = 10.0
    """How long the exit may take, all of it: claims still in flight, the ack flush, the
    release and the deregistration. Also bounds ``stop()``'s cleanup, ``run_workers``'
    cleanup, each claim, and each ack flush (past it, ``complete``/``fail`` raise
    :class:`DatabaseUnavailableError`)."""

    def __post_init__(self) -> None:
        capacity = _number("capacity", self.capacity, integer=True)
        if capacity < 1:
            self._fail("capacity", self.capacity, "it must be >= 1")
        low = _number("low_water", self.low_water, integer=True)
        if not 1 <= low <= capacity:
            self._fail("low_water", self.low_water, f"it must be between 1 and capacity ({self.capacity})")
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", self.capacity)
        elif not 1 <= _number("batch_size", self.batch_size, integer=True) <= capacity:
            self._fail("batch_size", self.batch_size, f"it must be between 1 and capacity ({self.capacity})")
        for name in ("poll_interval", "ttl", "lease", "stats_interval", "retry_base", "retry_max", "shutdown_timeout"):
            if _number(name, getattr(self, name), integer=False) <= 0:
                self._fail(name, getattr(self, name), "it must be > 0 seconds")
        if self.heartbeat_interval is None:
            object.__setattr__(self, "heartbeat_interval", self.lease / 3)
        elif not 0 < _number("heartbeat_interval", self.heartbeat_interval, integer=False) < self.lease:
            self._fail("heartbeat_interval", self.heartbeat_interval, f"it must be > 0 and < lease ({self.lease})")
        if self.retry_max > MAX_DELAY:
            self._fail("retry_max", self.retry_max, f"it must be at most {MAX_DELAY:.0f} seconds (100 years)")
        if _number("max_attempts", self.max_attempts, integer=True) < 1:
            self._fail("max_attempts", self.max_attempts, "it must be >= 1")
        self._check_queues()

    def _check_queues(self) -> None:
        queues: Any = self.queues
        if isinstance(queues, str) or not isinstance(queues, (tuple, list)) or not queues:
            self._fail("queues", queues, "it must be a non-empty tuple of queue names, e.g. ('default',)")
        for queue in queues:
            check_identifier("queue", queue)
        if len(set(queues)) != len(queues):
            self._fail("queues", queues, "queue names must be unique")
        object.__setattr__(self, "queues", tuple(queues))

    @staticmethod
    def _fail(name: str, value: object, rule: str) -> NoReturn:
        raise ConfigError(f"BufferConfig.{name}={value!r} is invalid: {rule}")

    @property
    def claim_size(self) -> int:
        """``batch_size`` as resolved on construction."""
        assert self.batch_size is not None
        return self.batch_size

    @property
    def heartbeat_every(self) -> float:
        """``heartbeat_interval`` as resolved on construction."""
        assert self.heartbeat_interval is not None
        return self.heartbeat_interval
