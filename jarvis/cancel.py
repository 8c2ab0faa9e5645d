"""Cancellation of one stream, shared by the thread that cancels and the worker.

Threads cannot be killed, so a worker must reach a checkpoint. A flag is only
seen between chunks; a worker blocked in ``recv`` or inside a model call never
looks at it. So whoever opens a blocking resource registers a callback here
(shut the socket down, raise the model's abort flag) and ``cancel()`` runs it
from the cancelling thread, which unblocks the worker at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("jarvis.cancel")


class CancelScope:
    """A one-shot cancel flag with callbacks that break blocking calls."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()  # guards reason and callbacks; never held across a call
        self._callbacks: list[Callable[[], object]] = []
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for cancellation; True if cancelled."""
        return self._event.wait(timeout)

    def cancel(self, reason: str) -> bool:
        """Cancel with ``reason``; True only for the first call."""
        with self._lock:
            if self._event.is_set():
                return False
            self.reason = reason
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _run(callback)
        return True

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Run ``callback`` on cancel (at once if already cancelled); returns an unregister."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._discard(callback)
        _run(callback)
        return lambda: None

    def _discard(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


def _run(callback: Callable[[], object]) -> None:
    # a failing closer must not stop the others, but it must be seen
    try:
        callback()
    except OSError:
        log.warning("cancel callback failed", exc_info=True)


class Latch:
    """A one-shot signal that also runs callbacks, so one wait can listen to several latches."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def then(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Run ``callback`` when set (at once if already set); returns an unregister."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._discard(callback)
        callback()
        return lambda: None

    def _discard(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)
