"""jobbuf: a PostgreSQL-backed job buffer for trio.

A buffer claims jobs from PostgreSQL in batches under a worker id, holds them in a bounded
in-process buffer and hands them to workers through ``take_job``. Stop is cancellation.
No job is ever stranded: what leaves the buffer unprocessed goes back to the database.
"""

from ._buffer import JobBuffer, open_job_buffer
from ._config import BufferConfig
from ._errors import (
    BufferAlreadyRunningError,
    BufferClosedError,
    ConfigError,
    DatabaseUnavailableError,
    JobbufError,
    LeaseLostError,
    SchemaError,
)
from ._job import Claim, Job
from ._memory import MemoryJobSource
from ._open_postgres import open_postgres_source
from ._postgres import PostgresJobSource
from ._source import Ack, AckOutcome, ClaimResult, JobSource, JobState, QueueCounts, WorkerInfo
from ._stats import BufferStats, rates
from ._workers import run_workers

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "AckOutcome",
    "BufferAlreadyRunningError",
    "BufferClosedError",
    "BufferConfig",
    "BufferStats",
    "Claim",
    "ClaimResult",
    "ConfigError",
    "DatabaseUnavailableError",
    "Job",
    "JobBuffer",
    "JobSource",
    "JobState",
    "JobbufError",
    "LeaseLostError",
    "MemoryJobSource",
    "PostgresJobSource",
    "QueueCounts",
    "SchemaError",
    "WorkerInfo",
    "open_job_buffer",
    "open_postgres_source",
    "rates",
    "run_workers",
]
