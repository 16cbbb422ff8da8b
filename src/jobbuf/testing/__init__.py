"""Test helpers for code that uses jobbuf, and for authors of new job sources.

- :class:`SourceContract`: a pytest suite every :class:`jobbuf.JobSource` must pass.
  Subclass it in a test module and provide a ``source`` fixture yielding a fresh, empty
  source (see :mod:`jobbuf.testing.contract`).

This package may grow (for example a pytest plugin with ready-made fixtures); what it
exports is listed in ``__all__``.
"""

from __future__ import annotations

from .contract import SourceContract

__all__ = ["SourceContract"]
