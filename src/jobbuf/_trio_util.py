"""Small trio helpers shared by the buffer and the sources."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
        if len(leaves) != 1:
            raise
        raise leaves[0] from leaves[0].__cause__
