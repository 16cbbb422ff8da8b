"""jobbuf's testing kit: for applications that use jobbuf, and for authors of job sources.

Run handlers and check what they did:

- :func:`drain`: run a real buffer and workers over a source until it is idle; returns a
  :class:`DrainResult` (completed jobs, failed attempts, dead jobs, final stats). Under
  pytest-trio's ``autojump_clock`` with :class:`jobbuf.MemoryJobSource`, leases, TTL, poll
  intervals and retry backoff all pass in virtual time.
- :func:`enqueue_jobs`: enqueue from plain dicts (unknown keys are a clear ``TypeError``).
- :func:`assert_queue_empty`, :func:`assert_attempts`, :func:`assert_dead`,
  :func:`assert_completed`: assertions on the source whose failure messages show the row.

Fixtures come from the pytest plugin :mod:`jobbuf.testing.plugin`, active as soon as
jobbuf is installed: ``memory_source``, ``postgres_source`` (a fresh schema per test,
never left behind) and ``jobbuf_dsn``; :func:`fresh_postgres_source` opens more sources.

For a new :class:`jobbuf.JobSource`: subclass :class:`SourceContract` in a test module and
give it a ``source`` fixture yielding a fresh, empty source; every test of the suite must
pass (see :mod:`jobbuf.testing.contract`).

Everything exported is listed in ``__all__``; the rest of the package is private.
"""

from __future__ import annotations

import pytest

# Plain ``assert`` in these modules gets pytest's detailed failure output when a
# project's tests use them (it must be registered before they are imported).
pytest.register_assert_rewrite("jobbuf.testing.contract", "jobbuf.testing._contract_acks")

from .assertions import (  # noqa: E402
    JOB_SPEC_KEYS,
    assert_attempts,
    assert_completed,
    assert_dead,
    assert_queue_empty,
    enqueue_jobs,
    format_job_state,
)
from .contract import SourceContract  # noqa: E402
from .helpers import DeadJob, DrainResult, DrainTimeoutError, FailedAttempt, drain, source_now  # noqa: E402
from .plugin import drop_schema, fresh_postgres_source, fresh_schema_name  # noqa: E402

__all__ = [
    "JOB_SPEC_KEYS",
    "DeadJob",
    "DrainResult",
    "DrainTimeoutError",
    "FailedAttempt",
    "SourceContract",
    "assert_attempts",
    "assert_completed",
    "assert_dead",
    "assert_queue_empty",
    "drain",
    "drop_schema",
    "enqueue_jobs",
    "format_job_state",
    "fresh_postgres_source",
    "fresh_schema_name",
    "source_now",
]
