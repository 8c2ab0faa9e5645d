"""Connections to one model server kept for its next short JSON call (an embedding batch).

A chat stream owns its connection: its cancel closes it. An embedding is one request and one
answer, and a connection opened for each costs a connect, and the server a new connection, every
time. So a connection whose answer ended exactly where its framing said, the server not closing
it, is kept here: at most ``size``, each for at most ``idle_s``, and looked at before it is lent
again (a server that closed it makes it readable). No thread and no wait: a call finds a kept
connection or opens one. ``close`` closes the kept ones and shuts the lent ones down, so a call
still waiting on one ends at once; nothing outlives the upstream that owns the pool.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import deque

from ..gil import shutdown

SIZE = 8  # kept connections per server: more than the batches a client sends at once, usually
IDLE_S = 4.0  # under the 5 s after which many servers (uvicorn, Node) close an idle connection


class Pool:
    """The kept connections to one server, and the ones lent to calls now running."""

    def __init__(self, size: int = SIZE, idle_s: float = IDLE_S):
        self.size = size
        self.idle_s = idle_s
        self._lock = threading.Lock()  # never held across a blocking call
        self._idle: deque[tuple[float, socket.socket]] = deque()  # (kept at, connection), oldest first
        self._lent: set[socket.socket] = set()
        self._closed = False

    def take(self) -> socket.socket | None:
        """A kept connection still open, lent from now on; None when there is none (connect then)."""
        stale = []
        found = None
        now = time.monotonic()
        with self._lock:
            while self._idle and found is None and not self._closed:
                kept_at, sock = self._idle.pop()  # the newest: the least likely to be closed by now
                if now - kept_at > self.idle_s or _closed_by_peer(sock):
                    stale.append(sock)
                else:
                    found = sock
                    self._lent.add(sock)
        for sock in stale:
            sock.close()
        return found

    def lend(self, sock: socket.socket) -> None:
        """Count a new connection as lent, so ``close`` breaks it too."""
        with self._lock:
            self._lent.add(sock)
            closed = self._closed
        if closed:  # the owner is shutting down: the call ends now rather than at its deadline
            shutdown(sock)

    def give(self, sock: socket.socket, reusable: bool) -> None:
        """A lent connection back from its call: kept when ``reusable`` and there is room, else closed."""
        now = time.monotonic()
        with self._lock:
            self._lent.discard(sock)
            expired = []
            while self._idle and now - self._idle[0][0] > self.idle_s:
                expired.append(self._idle.popleft()[1])
            keep = reusable and not self._closed and len(self._idle) < self.size and sock.fileno() >= 0
            if keep:
                self._idle.append((now, sock))
        for old in expired:
            old.close()
        if not keep:
            sock.close()

    def kept(self) -> int:
        """How many connections wait for a call now."""
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Close the kept connections and break the lent ones (their calls close them); idempotent."""
        with self._lock:
            self._closed = True
            idle, self._idle = [sock for _, sock in self._idle], deque()
            lent = list(self._lent)
        for sock in idle:
            sock.close()
        for sock in lent:
            shutdown(sock)  # wakes a call blocked in recv; the call's own cleanup closes it


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when a kept connection has anything to read: the server closed it (or sent bytes no
    request asked for); either way it cannot carry a request. ``poll``, not ``select``: no limit
    on the descriptor's number."""
    if sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))
