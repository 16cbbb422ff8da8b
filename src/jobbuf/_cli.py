"""The ``jobbuf`` command: migrate, enqueue, status, requeue, demo.

Every expected failure (bad input, unreachable database, missing schema, an error the
server reports) prints one line on stderr and exits with code 2; no traceback. SIGINT and
SIGTERM become cancellation: an interrupted command says so on stderr and exits with code
128 + the signal's number (130 for Ctrl-C), except ``demo``, which runs until interrupted
and then exits with 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import trio

from jobbuf_monitor.embedded import EmbeddedServerUnavailableError, cli_dsn, redact_dsn

from ._config import check_delay, check_identifier
from ._errors import JobbufError
from ._open_postgres import open_postgres_source
from ._postgres import PostgresJobSource
from ._source import check_enqueue
from ._trio_util import single_error

__all__ = ["main"]

Command = Callable[[PostgresJobSource, argparse.Namespace], Awaitable[None]]


def _parser() -> argparse.ArgumentParser:
    dsn_help = "PostgreSQL URL (default: $JOBBUF_DSN, else the embedded server)"
    schema_help = "schema holding jobbuf's tables (default: jobbuf)"
    p = argparse.ArgumentParser(prog="jobbuf", description="Operate a jobbuf job table in PostgreSQL.")
    p.add_argument("--dsn", help=dsn_help)
    p.add_argument("--schema", default="jobbuf", help=schema_help)
    # The same two options after the command too (`jobbuf migrate --dsn ...`); given
    # there, they win. SUPPRESS: absent, they leave the values from before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", default=argparse.SUPPRESS, help=dsn_help)
    common.add_argument("--schema", default=argparse.SUPPRESS, help=schema_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    command("migrate", "create or upgrade the schema (idempotent)")
    enq = command("enqueue", "add jobs to a queue")
    enq.add_argument("queue")
    enq.add_argument("payload", help="the job's payload, as JSON")
    enq.add_argument("--count", type=int, default=1, help="how many copies to add (default 1)")
    enq.add_argument("--priority", type=int, default=0)
    enq.add_argument("--delay", type=float, default=0.0, help="seconds until the jobs become ready")
    enq.add_argument("--max-attempts", type=int, default=None)
    st = command("status", "counts per queue and status, and live workers")
    st.add_argument("--json", action="store_true", help="print JSON instead of tables")
    rq = command("requeue", "put dead jobs back to pending (attempts reset)")
    rq.add_argument("queue")
    rq.add_argument("--dead", action="store_true", required=True, help="requeue dead jobs (required)")
    rq.add_argument("--id", type=int, action="append", dest="ids", help="only this job id (repeatable)")
    demo = command("demo", "run a demo workload until interrupted (the monitor shows it)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return p


async def _migrate(source: PostgresJobSource, args: argparse.Namespace) -> None:
    applied = source.migrated  # opened with migrate=True
    done = f"applied migration(s) {applied}" if applied else "already up to date"
    print(f"jobbuf: schema {source.schema!r} at {source.dsn}: {done}")


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not allowed")  # Python's json reads NaN and Infinity; JSON has neither


def _check_args(args: argparse.Namespace) -> None:
    """Validate input before connecting, so a typo never waits on the network."""
    if args.command == "enqueue":
        try:
            args.payload = json.loads(args.payload, parse_constant=_not_json)
        except ValueError as exc:
            raise JobbufError(f"payload {args.payload!r} is not JSON: {exc}") from None
        if args.count < 1:
            raise JobbufError(f"--count {args.count} is invalid: it must be >= 1")
        check_delay("--delay", args.delay)
        check_enqueue(args.queue, args.priority, None, args.max_attempts)
    if args.command == "requeue":
        check_identifier("queue", args.queue)
    check_identifier("schema", args.schema)


ENQUEUE_CHUNK = 10_000


async def _enqueue(source: PostgresJobSource, args: argparse.Namespace) -> None:
    # In chunks (one statement and one NOTIFY each), with progress on stderr for big counts.
    # Each chunk is atomic; if a later one fails, the message says how many were added.
    run_at = datetime.now(UTC) + timedelta(seconds=args.delay) if args.delay > 0 else None
    ids: list[int] = []
    while len(ids) < args.count:
        n = min(ENQUEUE_CHUNK, args.count - len(ids))
        try:
            with trio.fail_after(60):
                ids += await source.enqueue_many(
                    args.queue, [args.payload] * n, priority=args.priority, run_at=run_at,
                    max_attempts=args.max_attempts,
                )  # fmt: skip
        except (JobbufError, trio.TooSlowError) as exc:
            raise JobbufError(f"{exc} (enqueued {len(ids)} of {args.count} before that)") from None
        except trio.Cancelled:  # interrupted: the statement in flight may have committed or not
            print(f"jobbuf: enqueued {len(ids)} of {args.count}, and {n} more may have been added "
                  "by the statement that was interrupted", file=sys.stderr)  # fmt: skip
            raise
        if args.count > ENQUEUE_CHUNK:
            print(f"jobbuf: enqueued {len(ids)}/{args.count}", file=sys.stderr, flush=True)
    shown = f"{ids[0]}" if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"
    print(f"jobbuf: enqueued {len(ids)} job(s) on {args.queue!r} (id {shown})")


async def _status(source: PostgresJobSource, args: argparse.Namespace) -> None:
    queues = [vars_of(q) for q in await source.queue_counts()]
    workers = await source.workers()
    if args.json:
        print(json.dumps({"queues": queues, "workers": workers}, default=str, indent=2))
        return
    cols = ("queue", "pending", "scheduled", "claimed", "dead", "done", "oldest_pending_age")
    rows = [[_cell(q[c]) for c in cols] for q in queues]
    print(_table(cols, rows) if rows else "no jobs")
    wcols = ("worker_id", "host", "pid", "heartbeat_age", "depth", "claimed", "completed", "failed")
    wrows = [[_cell(w.get(c, w["stats"].get(c))) for c in wcols] for w in workers]
    print()
    print(_table(wcols, wrows) if wrows else "no live workers")


async def _requeue(source: PostgresJobSource, args: argparse.Namespace) -> None:
    ids = await source.requeue_dead(args.queue, args.ids)
    print(f"jobbuf: requeued {len(ids)} dead job(s) on {args.queue!r}")


async def _demo(source: PostgresJobSource, args: argparse.Namespace) -> None:
    from ._demo import run_demo

    await run_demo(source, duration=args.duration)


def vars_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return "-" if value is None else str(value)


def _table(cols: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


COMMANDS: dict[str, Command] = {
    "migrate": _migrate, "enqueue": _enqueue, "status": _status, "requeue": _requeue, "demo": _demo,
}  # fmt: skip


async def _run(args: argparse.Namespace, dsn: str) -> int:
    """Run the command; return the number of the signal that interrupted it, or 0.

    SIGINT/SIGTERM cancel the work (a raw KeyboardInterrupt can hang trio-asyncio). The
    watcher is not in the cancelled scope, so it goes on receiving until the cleanup,
    bounded by its deadlines, has ended: a second Ctrl-C meanwhile is absorbed, not
    raised in the middle of it."""
    interrupted_by = 0
    with single_error():
        async with trio.open_nursery() as nursery:
            work = trio.CancelScope()

            async def watch_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                nonlocal interrupted_by
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    task_status.started()
                    async for signum in signals:
                        interrupted_by = interrupted_by or signum
                        work.cancel()

            await nursery.start(watch_signals)
            with work:
                migrate = args.command in ("migrate", "demo")
                async with open_postgres_source(dsn, schema=args.schema, migrate=migrate) as source:
                    await COMMANDS[args.command](source, args)
            nursery.cancel_scope.cancel()
    return interrupted_by if work.cancelled_caught else 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    dsn = ""
    try:
        _check_args(args)
        dsn = cli_dsn(args.dsn)
        signum = trio.run(_run, args, dsn)
    except (JobbufError, ValueError, OSError, EmbeddedServerUnavailableError, asyncpg.PostgresError) as exc:
        # A server error jobbuf has no class for (permission denied, a read-only
        # server, ...) is still the server's answer to this command: one line too.
        message = redact_dsn(str(exc)) if dsn else str(exc)
        print(f"jobbuf: error: {message}", file=sys.stderr)
        return 2
    if signum and args.command != "demo":  # the demo runs until interrupted: that is its end
        print(f"jobbuf: {args.command} interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
