"""The live streams: at most one per session (per key), and a bounded number in all.

A lock guards the maps and is never held across a wait. Registering a stream
makes it the session's current one at once, under the lock, and cancels the
previous one; the new stream's worker then waits (bounded) for the previous
worker before it calls the upstream. Prompts that arrive together therefore
form a chain in which each waits for the one before, and a stream superseded
while it waited never calls the upstream at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .. import log
from ..cluster import Coordination
from ..errors import JarvisError
from ..status import Reason
from .keepers import Keepers
from .slots import Slots
from .stream import Stream, Tap
from .watch import Watcher


class Registry:
    """Live streams by session, with the supersede rule and the stream limit."""

    def __init__(
        self,
        max_streams: int,
        disconnect_poll_s: float = 0.02,
        max_streams_per_user: int = 0,
        max_readers_per_user: int = 0,
    ):
        self.max_streams = max_streams
        self.max_streams_per_user = max_streams_per_user
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._current: dict[str, Stream] = {}  # key (session id) -> its newest stream
        self._live: set[Stream] = set()  # every stream not yet released
        self._closed = False
        # the answers' and readers' places, and the disconnect watcher: both under this lock
        self.slots = Slots(
            self._lock, lambda: self._current, max_streams, max_streams_per_user, max_readers_per_user
        )
        self.watcher = Watcher(self._released, disconnect_poll_s, lambda: (self._live, self._closed))
        self.keepers = Keepers()  # the threads driving detached answers: joined at shutdown
        self.coord: Coordination | None = None  # when several processes share Redis: cluster/coord.py

    def admit(self, stream: Stream) -> None:
        """Hold a place for ``stream`` (every local admission check, under the lock) before anything
        reaches another process: a prompt refused here cancels no answer anywhere."""
        with self._lock:
            self.slots.check(stream, self._closed)
            self.slots.admitted.add(stream)

    def register(self, stream: Stream) -> Stream | None:
        """Make ``stream`` its key's current stream; returns the one it supersedes.

        Every admission check happens here (or in ``admit``, whose place it takes), under the lock."""
        with self._lock:
            self.slots.admitted.discard(stream)
            self.slots.check(stream, self._closed)
            prev = self._current.get(stream.key)
            self._current[stream.key] = stream
            self._live.add(stream)
            if stream.client_gone is not None:
                self.watcher.ensure_running()
        if prev is not None:
            prev.cancel(Reason.SUPERSEDED)
        return prev

    def hand_over(self, stream: Stream) -> None:
        """Admit, register and start ``stream``, here and in other processes (``hand_over``)."""
        hand_over(self, stream)

    def attach(self, key: str, last_event_id: str | None = None, client_gone=None) -> Tap | None:
        """A reader of ``key``'s live answer (from after ``last_event_id``); None when none is live."""
        with self._lock:
            stream = self._current.get(key)
        tap = stream.attach(last_event_id, client_gone) if stream is not None else None
        if tap is not None and client_gone is not None:
            with self._lock:
                if not self._closed:
                    self.watcher.ensure_running()
        return tap

    def current(self, key: str) -> Stream | None:
        """``key``'s newest stream in this process, or None: one look, however many streams live
        (a Stop asks this twice, and 64 Stops at once must not scan every stream 128 times)."""
        with self._lock:
            return self._current.get(key)

    def is_live(self, key: str) -> bool:
        """Whether ``key`` has a stream in this process."""
        with self._lock:
            return key in self._current

    def release(self, stream: Stream) -> None:
        """Forget ``stream``; called once by its cleanup."""
        with self._lock:
            self.slots.admitted.discard(stream)
            self._live.discard(stream)
            if self._current.get(stream.key) is stream:
                del self._current[stream.key]
            self._released.notify_all()
        if getattr(stream, "slot", None) is not None:
            self.coord.free_slot(stream.slot)

    def stop(self, key: str, reason: Reason = Reason.STOPPED) -> bool:
        """Cancel the current stream of ``key`` (a session id), here and in every process sharing Redis;
        False when none runs. ValueError for a reason not in the table."""
        reason = Reason(reason)
        with self._lock:
            stream = self._current.get(key)
        stopped = stream.cancel(reason) if stream is not None else False
        if stopped or self.coord is None:  # the session's current answer ran here
            return stopped
        return self.coord.stop(key, reason)

    def cancel_older(self, key: str, ticket: int, reason: Reason) -> int:
        """Cancel ``key``'s streams that arrived before ``ticket`` (a message from another process)."""
        return self.cancel_where(
            lambda s: s.key == key and s.lease is not None and s.lease.ticket < ticket, reason
        )

    def count_owned(self, owner) -> int:
        """How many sessions of ``owner`` have a live stream."""
        with self._lock:
            return sum(1 for s in self._current.values() if getattr(s, "owner", None) == owner)

    def cancel_where(self, predicate: Callable[[Stream], bool], reason: Reason) -> int:
        """Cancel every live stream ``predicate`` accepts; returns how many this call cancelled.
        ValueError for a reason not in the table."""
        reason = Reason(reason)
        with self._lock:
            chosen = [s for s in self._live if predicate(s)]
        return sum(1 for s in chosen if s.cancel(reason))

    def active(self) -> int:
        with self._lock:
            return len(self._live)

    def live(self) -> list[Stream]:
        with self._lock:
            return list(self._live)

    def shutdown(self, timeout: float) -> list[Stream]:
        """Refuse new streams, cancel every live one, wait up to ``timeout``; returns those left."""
        with self._lock:
            self._closed = True
            self._released.notify_all()  # the watcher ends now
            streams = list(self._live)
        for stream in streams:
            stream.cancel(Reason.SHUTDOWN)
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._live and (left := deadline - time.monotonic()) > 0:
                self._released.wait(left)
            left_over = list(self._live)
        self.watcher.join(deadline)
        for name in self.keepers.close(max(0.0, deadline - time.monotonic())):
            log.event("shutdown_keeper_left", logging.WARNING, thread=name)
        for stream in left_over:
            log.event(
                "shutdown_stream_left", logging.WARNING, trace_id=stream.trace_id, session=stream.session_id
            )
        return left_over


def hand_over(registry: Registry, stream: Stream) -> None:
    """Admit ``stream``, then register it (superseding its key's stream, here and in other
    processes) and start it; any failure ends it, stored and released, and is raised again."""
    try:
        registry.admit(stream)  # AtCapacity, TooManyStreams: before any other process hears of it
        if registry.coord is not None and stream.owner is not None and registry.max_streams_per_user > 0:
            stream.slot = registry.coord.take_slot(stream, registry.max_streams_per_user)  # TooManyStreams
        if registry.coord is not None and stream.key == stream.session_id is not None:
            # other processes cancel the session's older streams; CoordinationUnavailable without Redis
            stream.lease = registry.coord.claim(stream.key, stream.trace_id)
            stream.lease.bind(stream)
        stream.start(registry.register(stream))
    except JarvisError as e:
        stream.fail(e)
        raise
    except Exception as e:
        stream.fail(JarvisError(f"internal error: {type(e).__name__}"))
        raise
