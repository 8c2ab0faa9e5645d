"""The line of prompts waiting for a free model host (``hosts.py``), oldest first.

A prompt joins the line when every host with its model is at its ``;max=N`` limit and
says its place as it moves up; a freed host goes to the oldest waiter that can use it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Protocol

from ..cancel import CancelScope
from ..errors import UpstreamTimeout
from . import Progress

WAIT_SLICE_S = 0.25  # longest single wait for a free host; a cancel or a release wakes it sooner


class Host(Protocol):
    """What the line reads and counts of a host (``hosts.Host``), under the router's lock."""

    live: int
    started: int

    def free(self) -> bool: ...


class _Waiter:
    """A prompt in line for a host: woken by its own event when a host is handed to it."""

    def __init__(self, model: str, tried: list[Host]):
        self.model = model
        self.tried = tried
        self.host: Host | None = None  # handed over under the router's lock, taken by the waiter
        self.place = 0  # 1 for the head of the line; set under the router's lock
        self.ready = threading.Event()


class Line:
    """Prompts waiting for a free host, oldest first, each within its one deadline.

    A freed host goes to the oldest waiter that can use it, never to a newcomer. The
    router's lock guards the line with the hosts' counts; ``candidates(model, tried)``
    names the hosts a waiter may use."""

    def __init__(self, lock: threading.Lock, candidates: Callable[[str, list[Host]], list[Host]]):
        self._lock = lock
        self._candidates = candidates
        self._waiting: list[_Waiter] = []  # oldest first

    def join(self, model: str, tried: list[Host]) -> _Waiter:
        """Put a prompt at the end of the line and hand it a host if one is free (under the lock)."""
        waiter = _Waiter(model, tried)
        self._waiting.append(waiter)
        self.dispatch()
        return waiter

    def wait(
        self, waiter: _Waiter, cancel: CancelScope, deadline: float, busy_s: float
    ) -> Generator[Progress, None, Host | None]:
        """The host handed to ``waiter``, saying its place as it moves up; None once cancelled."""
        unregister = cancel.on_cancel(lambda: self.leave(waiter))
        shown = None
        try:
            while True:
                with self._lock:
                    if cancel.cancelled:  # checkpoint: cancelled while waiting for a host
                        return None
                    if waiter.host is None:
                        self.dispatch()  # a host may have come up since: still the oldest first
                    if waiter.host is not None:
                        host, waiter.host = waiter.host, None
                        return host
                    position = waiter.place
                if position != shown:
                    shown = position
                    yield Progress("queued", position=position)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise UpstreamTimeout(
                        f"every host with {waiter.model} stayed busy for {busy_s:g} s",
                        code="first_token_timeout",
                    )
                # woken at once by a host handed over or a cancel; the slice only refreshes the position
                waiter.ready.wait(min(left, WAIT_SLICE_S))
                waiter.ready.clear()
        finally:
            unregister()
            self.leave(waiter)

    def dispatch(self) -> None:
        """Hand free hosts to waiters, oldest first (under the lock)."""
        for waiter in list(self._waiting):
            free = [h for h in self._candidates(waiter.model, waiter.tried) if h.free()]
            if free:
                host = min(free, key=lambda h: (h.live, h.started))
                host.live += 1
                host.started += 1
                waiter.host = host
                self._waiting.remove(waiter)
                waiter.ready.set()
        for place, waiter in enumerate(self._waiting, 1):
            if waiter.place != place:  # it moved up the line: it wakes and says so
                waiter.place = place
                waiter.ready.set()

    def leave(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of the line at once; a host handed to it and not taken goes back."""
        with self._lock:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            host, waiter.host = waiter.host, None
            if host is not None:
                host.live -= 1
            self.dispatch()
        waiter.ready.set()
