"""Jitter for retries, backoffs and polls, independent of the program's ``random`` state."""

from __future__ import annotations

import random

__all__ = ["uniform"]

# Seeded from the OS, and never by the program: processes that all call random.seed(0) at
# start must still spread their retries after an outage, which is what jitter is for.
_rng = random.Random()


def uniform(low: float, high: float) -> float:
    """A uniform float in ``[low, high]``."""
    return _rng.uniform(low, high)
