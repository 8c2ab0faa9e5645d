"""The disconnect watcher: ends the streams whose client has gone.

One thread, started when the first stream with a ``client_gone`` check
registers, polls those checks every ``poll_s`` and ends when no such stream
lives or the registry closes. A server that sees a client close says so
(``client_closed``): that client's streams end at once, and the watcher looks
again without waiting for its next poll. It shares the registry's lock and
condition, never held across a check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stream import Stream


class Watcher:
    """The registry's disconnect watcher; ``streams()`` (under the lock) gives the live streams
    and whether the registry has closed."""

    def __init__(
        self,
        cond: threading.Condition,
        poll_s: float,
        streams: Callable[[], tuple[Iterable[Stream], bool]],
    ):
        self._cond = cond  # the registry's: notified when a stream is released or at shutdown
        self.poll_s = poll_s
        self._streams = streams
        self._thread: threading.Thread | None = None
        self._client_closed = False  # a server said a client closed since the watcher last looked

    def ensure_running(self) -> None:
        """Start the watcher unless it runs: under the registry's lock."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="jarvis-disconnect-watch")
            self._thread.start()

    def client_closed(self, gone: Callable[[], bool] | None = None) -> None:
        """A client's connection closed (the server says so, passing that client's ``client_gone``):
        its streams end now, in this thread; the watcher looks again too, not at its next poll."""
        with self._cond:
            self._client_closed = True  # seen by the watcher even if it is not waiting right now
            if self._thread is not None:
                self._cond.notify_all()
            live, _ = self._streams()
            # a bound method equals another of the same object: the channel's check finds its streams
            left = [s for s in live if gone is not None and s.client_gone == gone]
        for stream in left:
            if not stream.scope.cancelled:
                stream.client_left()

    def join(self, deadline: float) -> None:
        """Wait for the watcher (woken by the registry's shutdown) until ``deadline``, plus a few polls."""
        with self._cond:
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()) + self.poll_s * 5)

    def _watch(self) -> None:
        """Cancel streams whose client has gone; runs while such streams live, until shutdown."""
        while True:
            with self._cond:
                live, closed = self._streams()
                watched = [s for s in live if s.client_gone is not None]
                if not watched or closed:  # closed: shutdown cancelled them all already
                    self._thread = None
                    return
            for stream in watched:
                gone = stream.client_gone  # the holder's: another reader may take over
                if not stream.scope.cancelled and gone is not None and gone():
                    stream.client_left()
            with self._cond:
                if not self._client_closed:
                    self._cond.wait(self.poll_s)
                self._client_closed = False
