"""The error hierarchy. Every error jobbuf raises on purpose is a :class:`JobbufError`.

Messages name the field, the bad value and the fix, and never contain a password.
"""

from __future__ import annotations

__all__ = [
    "BufferAlreadyRunningError",
    "BufferClosedError",
    "ConfigError",
    "DatabaseUnavailableError",
    "JobbufError",
    "LeaseLostError",
    "SchemaError",
]


class JobbufError(Exception):
    """Base class of every error jobbuf raises on purpose."""


class ConfigError(JobbufError, ValueError):
    """A configuration value (``BufferConfig``, DSN, schema or queue name) is invalid."""


class SchemaError(JobbufError):
    """The database schema is missing or at an unexpected version."""


class DatabaseUnavailableError(JobbufError, ConnectionError):
    """The database could not be reached within the retry deadline."""


class BufferAlreadyRunningError(JobbufError, RuntimeError):
    """``JobBuffer.run`` was started while the buffer was already running (or had run)."""


class BufferClosedError(JobbufError):
    """The buffer was stopped: it hands out no more jobs (``take_job``, ``offer_jobs``),
    and once ``run`` has ended it accepts no acks or releases either. Also raised by
    ``offer_jobs`` before the buffer has started."""


class LeaseLostError(JobbufError):
    """An ack for a job this buffer no longer owns; nothing was changed in the database."""

    def __init__(self, message: str, job_ids: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.job_ids = job_ids
