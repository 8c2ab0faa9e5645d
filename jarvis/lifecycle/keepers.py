"""The threads that drive detached answers, owned in one place so shutdown can join them.

A keeper runs while nobody reads an answer (``JARVIS_DETACH_GRACE``). Threads
inherit their daemon flag from whoever starts them, and waitress's threads are
daemons: a keeper nobody held would be killed mid-write at exit. So keepers are
started here, never daemons, and ``close()`` refuses new ones and joins the rest
to a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Keepers:
    """Starts keeper threads and joins them, bounded, at shutdown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def start(self, name: str, target: Callable[[], object]) -> bool:
        """Run ``target`` in a keeper thread; False once closed (the caller ends its answer now)."""
        with self._lock:
            if self._closed:
                return False
            thread = threading.Thread(target=self._run, args=(target,), name=name, daemon=False)
            self._threads.add(thread)
            thread.start()  # under the lock: close() sees every keeper started before it
        return True

    def _run(self, target: Callable[[], object]) -> None:
        try:
            target()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def alive(self) -> list[str]:
        """The names of the keepers still running."""
        with self._lock:
            return sorted(t.name for t in self._threads)

    def close(self, timeout: float) -> list[str]:
        """Refuse new keepers and wait up to ``timeout`` for the running ones; returns those left.
        Their answers must be cancelled first: a keeper ends within one cleanup of a cancel."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sorted(t.name for t in threads if t.is_alive())
