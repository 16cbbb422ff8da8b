"""``jobbuf-monitor``: the command line of the monitor.

Exit codes: 0 on success; 2 for a usage error, a bad DSN, an unreachable server or a
missing schema. Each failure is ONE line on stderr, ``jobbuf-monitor: ...``, with no
traceback and with any password in the DSN replaced by ``***``.

``--demo`` runs ``python -m jobbuf demo`` as a child process (the DSN goes in ``JOBBUF_DSN``,
so it never shows in ``ps``), and on exit sends it SIGINT, waits up to 10 s, then SIGKILLs
it: no orphan is left behind when the monitor exits normally or by SIGTERM/SIGHUP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .embedded import cli_dsn, copyable_dsn, redact_dsn
from .feed import (
    MonitorError,
    SchemaMissingError,
    Snapshot,
    check_schema,
    connect,
    quote_schema,
    read_snapshot,
    safe_error,
)

__all__ = ["main"]

PROG = "jobbuf-monitor"
DEMO_CMD_ENV = "JOBBUF_MONITOR_DEMO_CMD"
"""Hidden override of the demo command (shlex-split), for tests and development."""
DEMO_STOP_TIMEOUT = 10.0
QUEUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class CliError(Exception):
    """A failure reported as one line on stderr with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--screenshot-after`` is hidden: it only tunes ``--screenshot``)."""
    parser = argparse.ArgumentParser(prog=PROG, description="Live terminal monitor of jobbuf buffers.")
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $JOBBUF_DSN, else the embedded server)")
    parser.add_argument("--schema", default="jobbuf", help="schema holding the jobbuf tables (default: jobbuf)")
    parser.add_argument("--queue", help="show only this queue, and workers claiming from it")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS", help="poll period (default: 1.0)")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--json", action="store_true", help="with --once: print the snapshot as JSON")
    parser.add_argument("--demo", action="store_true", help="also run the `jobbuf demo` workload while monitoring")
    parser.add_argument("--screenshot", type=Path, metavar="PATH", help="save an SVG screenshot after a delay, exit")
    parser.add_argument("--screenshot-after", type=float, default=3.0, metavar="SECONDS", help=argparse.SUPPRESS)
    return parser


def _fail(message: str) -> int:
    """Print ``jobbuf-monitor: <message>`` on stderr and return exit code 2."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to ``sys.exit``)."""
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        dsn = _resolve_dsn(args.dsn)
        if args.once:
            return _print_once(dsn, args)
        if not args.demo:
            asyncio.run(_probe(dsn, args.schema))
        with _demo(dsn, args.schema, enabled=args.demo):
            _run_app(dsn, args)
    except CliError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return 0


def _check_args(args: argparse.Namespace) -> None:
    try:
        quote_schema(args.schema)
    except ValueError as exc:
        raise CliError(str(exc).replace("schema", "--schema", 1)) from None
    if args.queue is not None and not QUEUE_NAME.fullmatch(args.queue):  # jobbuf's rule for queue names
        raise CliError(
            f"--queue {args.queue!r} is not a valid name: use 1-63 letters, digits or underscores, "
            "not starting with a digit"
        )
    if not args.refresh > 0:
        raise CliError(f"--refresh {args.refresh} is invalid: it must be > 0 seconds")
    if args.json and not args.once:
        raise CliError("--json needs --once (the live view is interactive)")


def _resolve_dsn(given: str | None) -> str:
    try:
        return cli_dsn(given)
    except Exception as exc:  # pgserver failures have no common base class
        raise CliError(f"cannot start the embedded PostgreSQL server: {' '.join(str(exc).split())}") from None


def _schema_hint(schema: str, dsn: str) -> str:
    return f'schema "{schema}" not found: run jobbuf migrate --dsn {copyable_dsn(dsn)}' + (
        f" --schema {schema}" if schema != "jobbuf" else ""
    )


async def _probe(dsn: str, schema: str, queue: str | None = None, *, read: bool = False) -> Snapshot | None:
    """Connect and check the schema (and read one snapshot if ``read``); raise CliError."""
    try:
        conn = await connect(dsn)
    except MonitorError as exc:
        raise CliError(str(exc)) from None
    try:
        await check_schema(conn, schema)
        return await read_snapshot(conn, schema, queue) if read else None
    except SchemaMissingError:
        raise CliError(_schema_hint(schema, dsn)) from None
    except Exception as exc:  # any query failure is reported as one redacted line
        raise CliError(f"cannot read from {redact_dsn(dsn)}: {safe_error(exc, dsn)}") from None
    finally:
        conn.terminate()


def _print_once(dsn: str, args: argparse.Namespace) -> int:
    snap = asyncio.run(_probe(dsn, args.schema, args.queue, read=True))
    assert snap is not None
    if args.json:
        print(json.dumps(snap.as_json(), default=str))
    else:
        print(_plain(snap))
    return 0


def _plain(snap: Snapshot) -> str:
    lines = [f"{'worker':<20} {'host:pid':<24} {'state':<6} {'depth':>11} {'claimed':>9} {'discarded':>9}"]
    for w in snap.workers:
        depth = f"{w['depth']}/{w['capacity']}"
        host = f"{w['host']}:{w['pid']}"
        lines.append(
            f"{w['worker_id']:<20} {host:<24} {w['state']:<6} {depth:>11} {w['claimed']:>9} {w['discarded']:>9}"
        )
    lines.append("")
    lines.append(f"{'queue':<20} {'pending':>9} {'scheduled':>9} {'claimed':>9} {'dead':>9}")
    for q in snap.queues:
        lines.append(f"{q['queue']:<20} {q['pending']:>9} {q['scheduled']:>9} {q['claimed']:>9} {q['dead']:>9}")
    return "\n".join(lines)


def _run_app(dsn: str, args: argparse.Namespace) -> None:
    """Run the live view; log records go to Textual's devtools log, never over the screen."""
    from textual.logging import TextualHandler

    from .app import MonitorApp  # imported late: --once never loads Textual

    logging.basicConfig(level=logging.WARNING, handlers=[TextualHandler()], force=True)

    app = MonitorApp(
        dsn,
        schema=args.schema,
        queue=args.queue,
        refresh=args.refresh,
        screenshot=args.screenshot,
        screenshot_after=args.screenshot_after,
        handle_signals=True,
    )
    if args.screenshot is not None:
        app.run(headless=True, size=(132, 38))
    else:
        app.run()


def demo_command(schema: str = "jobbuf") -> list[str]:
    """The workload command: ``$JOBBUF_MONITOR_DEMO_CMD`` if set, else ``python -m jobbuf
    --schema SCHEMA demo`` (which migrates the schema first)."""
    override = os.environ.get(DEMO_CMD_ENV)
    return shlex.split(override) if override else [sys.executable, "-m", "jobbuf", "--schema", schema, "demo"]


@contextlib.contextmanager
def _demo(dsn: str, schema: str, *, enabled: bool) -> Iterator[subprocess.Popen[bytes] | None]:
    """Run the demo workload for the duration of the block; always stop it afterwards."""
    if not enabled:
        yield None
        return
    log = tempfile.NamedTemporaryFile(prefix="jobbuf-demo-", suffix=".log", delete=False)  # noqa: SIM115
    env = {**os.environ, "JOBBUF_DSN": dsn}
    try:
        proc = subprocess.Popen(demo_command(schema), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                start_new_session=True)  # fmt: skip
    except OSError as exc:
        log.close()
        raise CliError(f"cannot start the demo workload: {exc}") from None
    try:
        yield proc
    finally:
        code = stop_child(proc)
        log.close()
        if code not in (0, -signal.SIGINT, 130):
            print(f"{PROG}: the demo workload exited with code {code}; its output is in {log.name}", file=sys.stderr)


def stop_child(proc: subprocess.Popen[Any], timeout: float = DEMO_STOP_TIMEOUT) -> int:
    """SIGINT ``proc``, wait up to ``timeout``, then SIGKILL it; returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
