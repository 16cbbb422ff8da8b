"""The source contract, run against :class:`MemoryJobSource` (real time, no autojump)."""

from __future__ import annotations

import pytest

from jobbuf._memory import MemoryJobSource
from jobbuf.testing import SourceContract


class TestMemorySourceContract(SourceContract):
    @pytest.fixture
    def source(self) -> MemoryJobSource:
        return MemoryJobSource()


class TestMemorySourceKeepingCompletedContract(SourceContract):
    """``keep_completed=True``: completed rows stay, with status ``done``."""

    keeps_completed = True

    @pytest.fixture
    def source(self) -> MemoryJobSource:
        return MemoryJobSource(keep_completed=True)
