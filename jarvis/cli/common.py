"""What the commands share: exit codes, the error line, loopback names, a SQLite file's folder."""

from __future__ import annotations

import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENDED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# the --backend choices of serve and check, as JARVIS_BACKEND names them
BACKENDS = ("auto", "ollama", "local", "openai")


class Abort(Exception):
    """A command cannot go on: ``main`` prints the message as ``jarvis: ...`` and exits with the code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.message, self.code = message, code


def fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"jarvis: {message}", file=sys.stderr)
    return code


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_folder(database: str) -> None:
    """Create the folder of a SQLite file (a PostgreSQL URL needs none)."""
    from ..store.engines import is_postgres

    if not is_postgres(database):
        os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
