"""Where the database comes from when nobody says (DESIGN.md §4), and DSN redaction.

This module imports neither trio nor trio_asyncio, so both the library and the monitor
(a plain-asyncio process) use it.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = [
    "LOCAL_DSN",
    "EmbeddedServerUnavailableError",
    "cli_dsn",
    "copyable_dsn",
    "data_dir",
    "dsn_parse_error",
    "dsn_password",
    "embedded_dsn",
    "redact_dsn",
    "server_answers",
    "test_dsn",
]

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"
"""The local development server this project's tests use when it answers."""


class EmbeddedServerUnavailableError(Exception):
    """No DSN was given and the embedded server cannot be started here (no pgserver)."""


# A URL's password runs from the colon after the user name to the last "@" before a space:
# it may hold an unencoded "@", "/", "?" or "#" (which parsers then take for other parts),
# and the user name an "@" too ("admin@server", as some hosted services write it).
_URL_PASSWORD = re.compile(r"(://[^:/?#\s]*):(\S*)@")
_QUERY_PASSWORD = re.compile(r"(password=)([^&\s]*)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """``dsn`` (or a text holding DSNs) with any password replaced by ``***``: URL form
    and ``password=`` form."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", dsn))


def dsn_password(dsn: str) -> str | None:
    """The password written in ``dsn`` (as written: maybe percent-encoded), or None."""
    for pattern in (_URL_PASSWORD, _QUERY_PASSWORD):
        if (match := pattern.search(dsn)) and match.group(2):
            return match.group(2)
    return None


def dsn_parse_error(exc: BaseException, dsn: str) -> str:
    """Why ``dsn`` could not be parsed, safe to show. The parser's own message may quote a
    piece of the password (one with an unencoded "@", "/", "?", "#" or ":" is split
    there): then a hint replaces it."""
    text = redact_dsn(" ".join(str(exc).split()) or type(exc).__name__)
    pieces = {form for piece in re.split(r"[@/?#:]", dsn_password(dsn) or "") for form in (piece, unquote(piece))}
    if any(piece and piece in text for piece in pieces):
        return (
            "it cannot be parsed: check its host, port and database, and percent-encode "
            "any @ : / ? # in the user name and password"
        )
    return text


def copyable_dsn(dsn: str) -> str:
    """``dsn`` for a hint to copy: redacted, it would not work, so then ``<your DSN>``."""
    shown = redact_dsn(dsn)
    return "<your DSN>" if "***" in shown else shown


def data_dir() -> Path:
    """The user's data directory for jobbuf (``$XDG_DATA_HOME/jobbuf`` or ``~/.local/share/jobbuf``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "jobbuf"


def embedded_dsn(pgdata: Path | None = None) -> str:
    """Start (or reuse) the embedded PostgreSQL server and return its DSN.

    The server keeps its data under ``pgdata`` (default: ``data_dir() / "pgdata"``) and is
    stopped when the last process that started it exits. Cold start takes about a second.
    """
    try:
        import pgserver  # imported late: it is only needed when no server is configured
    except ImportError:
        raise EmbeddedServerUnavailableError(
            "no PostgreSQL server was given, and the embedded one needs the pgserver package, "
            f"which is not installed{' (it has no build for Python 3.13)' if sys.version_info >= (3, 13) else ''}: "
            "give a DSN (--dsn or $JOBBUF_DSN; $JOBBUF_TEST_DSN for tests)"
        ) from None

    path = pgdata or data_dir() / "pgdata"
    path.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
    return str(server.get_uri("postgres"))


def cli_dsn(given: str | None) -> str:
    """DSN for a CLI: ``--dsn``, else ``$JOBBUF_DSN``, else the embedded server."""
    return given or os.environ.get("JOBBUF_DSN") or embedded_dsn()


def server_answers(dsn: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at the DSN's host and port."""
    parts = urlsplit(dsn)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=timeout):
            return True
    except OSError:
        return False


def test_dsn() -> str:
    """DSN for test suites: ``$JOBBUF_TEST_DSN``, else the local server if it answers, else
    the embedded server."""
    given = os.environ.get("JOBBUF_TEST_DSN")
    if given:
        return given
    if server_answers(LOCAL_DSN):
        return LOCAL_DSN
    return embedded_dsn()
