"""Jitter for retries, backoffs and polls, independent of the program's ``random`` state."""

from __future__ import annotations

import os
import random

__all__ = ["uniform"]

# Seeded from the OS, and never by the program: processes that all call random.seed(0) at
# start must still spread their retries after an outage, which is what jitter is for.
# Reseeded in a forked child, as the global one is: otherwise the workers of a pre-fork
# pool would all draw the same sequence.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)


def uniform(low: float, high: float) -> float:
    """A uniform float in ``[low, high]``."""
    return _rng.uniform(low, high)
