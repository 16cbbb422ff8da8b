"""Small trio helpers shared by the buffer and the sources."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["single_error"]


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


@contextmanager
def single_error() -> Iterator[None]:
    """Re-raise an ExceptionGroup that holds exactly one exception as that exception.

    Public context managers use this so callers see ``DatabaseUnavailableError`` rather
    than an ExceptionGroup wrapping it; a group with several distinct errors is kept.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        # A Cancelled beside a real error only says the scope was cancelled meanwhile; the
        # error is the explanation (the cancellation is re-delivered at the next checkpoint).
        errors = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
        if len(errors) == 1:
            raise errors[0] from errors[0].__cause__
        if len(leaves) == 1:
            raise leaves[0] from leaves[0].__cause__
        raise
