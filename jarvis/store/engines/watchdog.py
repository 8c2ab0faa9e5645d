"""A deadline of Jarvis's own for every PostgreSQL call: the socket under a late call is shut down.

libpq has no deadline of its own for a call, and the kernel of a stopped or
frozen server still accepts and acknowledges: neither ``statement_timeout``
nor keepalives nor ``tcp_user_timeout`` ever fire there.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg

from ... import log

IDLE_WAIT_S = 1.0  # the watchdog's longest sleep with nothing to watch


class Watchdog:
    """Closes the socket under a database call still running at its deadline.

    libpq has no deadline of its own for a call, and the kernel of a stopped or
    frozen server still accepts and acknowledges: neither ``statement_timeout``
    nor keepalives nor ``tcp_user_timeout`` ever fire. Shut down under it, the
    blocked call fails at once and its connection counts as broken. One thread
    per engine, started on first use; ``close`` ends and joins it.
    """

    def __init__(self, timeout_s: float, where: str):
        self.timeout_s = timeout_s
        self.where = where
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, psycopg.Connection]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def guard(self, conn: psycopg.Connection) -> Iterator[None]:
        """Bound the call made inside by ``timeout_s``."""
        with self._cond:
            key = next(self._ids)
            if not self._armed:
                self._cond.notify()  # asleep with nothing to watch: this deadline is the next one
            self._armed[key] = (time.monotonic() + self.timeout_s, conn)
            if self._thread is None and not self._closed:
                # a daemon, joined by close(): a command that never closes its store still exits
                self._thread = threading.Thread(
                    target=self._run, name="jarvis-postgres-watchdog", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._cond:
                self._armed.pop(key, None)  # gone already if the watchdog fired

    def close(self, timeout: float) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for key, (deadline, conn) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[key]
                        _sever(conn)
                        log.event(
                            "database_call_timed_out",
                            logging.ERROR,
                            database=self.where,
                            timeout_s=self.timeout_s,
                        )
                nearest = min((d for d, _ in self._armed.values()), default=now + IDLE_WAIT_S)
                self._cond.wait(max(0.0, nearest - now))


def _sever(conn: psycopg.Connection) -> None:
    """Shut the connection's socket down: the call blocked on it returns with an error."""
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))  # a duplicate: the connection keeps its own
    except (OSError, psycopg.Error):  # already closed
        return
    with sock, suppress(OSError):  # OSError: not connected any more
        sock.shutdown(socket.SHUT_RDWR)
