"""The stream slots and who holds them.

An answer holds a slot from its admission (``admitted``) until the registry
releases it; an attached reader holds one too, for it holds a server thread,
so the server's control threads stay free for Stop, health and history. Every
count is read and written under the registry's lock: a stream's admission
check and a reader's see the same numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import AtCapacity, TooManyStreams

if TYPE_CHECKING:
    from .stream import Stream


class Slots:
    """The answers and readers holding stream slots, in all and by account; guarded by the
    registry's lock, and ``current()`` (called under it) is the registry's map of key to stream."""

    def __init__(
        self,
        lock: threading.Lock,
        current: Callable[[], dict[str, Stream]],
        max_streams: int,
        max_streams_per_user: int = 0,
        max_readers_per_user: int = 0,
    ):
        self._lock = lock
        self._current = current
        self.max_streams = max_streams
        self.max_streams_per_user = max_streams_per_user
        self.max_readers_per_user = max_readers_per_user
        self.admitted: set[Stream] = set()  # let in, not yet registered: each holds its place
        self.readers = 0  # attached readers, in all and by account
        self._readers_by_owner: dict[object, int] = {}

    def check(self, stream: Stream, closed: bool) -> None:
        """Raise unless ``stream`` may run (none may once the registry has ``closed``): under the lock.
        A stream of a key that already has one (running or admitted) supersedes it: no new place."""
        if closed:
            raise AtCapacity("Jarvis is shutting down", retry_after_s=5)
        places = {k: getattr(s, "owner", None) for k, s in self._current().items()}
        places.update((s.key, getattr(s, "owner", None)) for s in self.admitted if s is not stream)
        if stream.key in places:
            return
        if len(places) + self.readers >= self.max_streams:  # readers hold server threads too
            raise AtCapacity(
                f"all {self.max_streams} stream slots are busy; retry in a few seconds", retry_after_s=2
            )
        owner = getattr(stream, "owner", None)
        owned = sum(1 for o in places.values() if o == owner)
        if owner is not None and 0 < self.max_streams_per_user <= owned:
            raise TooManyStreams(
                f"this account already has {self.max_streams_per_user} answers streaming; "
                "stop one or wait for it to end"
            )

    def admit_reader(self, owner) -> Callable[[], None]:
        """Count one more attached reader of ``owner`` against the stream slots and the account's
        readers; returns its release (idempotent). TooManyStreams when either is full."""
        with self._lock:
            if len(self._current()) + len(self.admitted) + self.readers >= self.max_streams:
                raise TooManyStreams(
                    f"all {self.max_streams} stream slots are busy with answers and their readers; "
                    "close a tab that shows an answer"
                )
            mine = self._readers_by_owner.get(owner, 0)
            if owner is not None and 0 < self.max_readers_per_user <= mine:
                raise TooManyStreams(
                    f"this account already has {self.max_readers_per_user} readers of live answers; close one"
                )
            self.readers += 1
            self._readers_by_owner[owner] = mine + 1
        released = []

        def release() -> None:
            with self._lock:
                if released:
                    return
                released.append(True)
                self.readers -= 1
                left = self._readers_by_owner.pop(owner) - 1
                if left:
                    self._readers_by_owner[owner] = left

        return release
