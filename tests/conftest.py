"""Shared fixtures come from jobbuf's own pytest plugin (jobbuf.testing.plugin), which the
installed package registers; this file only adds project-internal ones."""

from __future__ import annotations

import pytest

from jobbuf import PostgresJobSource

pytest_plugins = ["pytester"]  # tests/testing runs inner pytest sessions


@pytest.fixture
def pg(postgres_source: PostgresJobSource, jobbuf_dsn: str) -> tuple[PostgresJobSource, str]:
    """(source, dsn) for integration tests."""
    return postgres_source, jobbuf_dsn
