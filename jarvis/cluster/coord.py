"""Coordination of several Jarvis processes through Redis (``JARVIS_REDIS_URL``).

Each process keeps its own registry for the streams it runs; the ``Coordinator`` adds what one
process cannot see alone, composed of one piece per job: the leases of its sessions and their
tickets (``lease.py``), the control channel (``control.py``), its accounts' stream slots
(``limits.py``) and the mirror for readers in other processes (``mirror.py``), over one
connection (``link.py``). It owns their two threads: the listener of the control channel, and
the renewer, which heartbeats the process's liveness key and renews its leases and slots.

When Redis cannot be reached a new prompt is refused at once (``CoordinationUnavailable``) while
live answers go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from .. import log
from ..errors import CoordinationUnavailable
from ..status import Reason
from . import Attach, CancelOlder, LiveStream, Slot
from .control import Control
from .lease import Leases, Liveness, SessionLease, Waiters
from .limits import Slots, UserSlot
from .link import Link
from .mirror import Mirror, Pumps

BEATS_PER_TTL = 4  # heartbeats per liveness TTL: a process is seen dead after missing this many


class Coordinator:
    """The cluster side of one process (the ``Coordination`` the registry calls); ``close()`` joins
    its threads."""

    def __init__(
        self,
        url: str,
        cancel: CancelOlder,
        lease_ttl_s: float = 10.0,
        timeout_s: float = 0.5,
        interrupt: Callable[[str], object] | None = None,
        attach: Attach | None = None,
        liveness_ttl_s: float = 1.5,
        max_connections: int = 24,
    ):
        """``cancel(key, before_ticket, reason)`` cancels this process's streams of ``key`` whose ticket
        is below ``before_ticket``; ``interrupt(trace_id)`` marks the stored answer of another
        process's stream, whose lease this process took over, as interrupted; ``attach(key,
        last_event_id, client_gone)`` gives a Tap of this process's live answer for a remote reader.
        ``max_connections`` bounds each of the two pools (the threads that may call at once)."""
        self.link = Link(url, timeout_s, max_connections)
        self.process_id = self.link.process_id
        self.liveness = Liveness(self.link, liveness_ttl_s)
        waiters = Waiters()
        self.control = Control(
            self.link,
            cancel,
            subscribed=self.liveness.beat,
            released=waiters.wake,
            # the pumps need the leases, which need the channel: looked up when a message comes
            attach=lambda key, reader, last: self.pumps.serve(key, reader, last),
            detach=lambda reader: self.pumps.gone(reader),
        )
        self.leases = Leases(self.link, self.control, waiters, lease_ttl_s, interrupt)
        self.slots = Slots(self.link, lease_ttl_s)
        self.mirror = Mirror(self.link, self.leases)
        self.pumps = Pumps(self.mirror, attach)
        # daemons only so that a host that never calls shutdown (plain waitress) can still exit;
        # close() joins them
        self._listener = threading.Thread(target=self.control.listen, name="jarvis-coord-listen", daemon=True)
        self._renewer = threading.Thread(target=self._renew_loop, name="jarvis-coord-renew", daemon=True)
        self._listener.start()
        self._renewer.start()

    # what the registry calls

    def claim(self, key: str, trace_id: str) -> SessionLease:
        """A ticket for a new prompt of ``key``; every process cancels the session's older streams.
        Raises CoordinationUnavailable at once while Redis cannot be reached."""
        return self.leases.claim(key, trace_id)

    def take_slot(self, stream: LiveStream, limit: int) -> UserSlot:
        """Count ``stream`` among its owner's streams in every process (TooManyStreams past ``limit``)."""
        return self.slots.take(stream, limit)

    def free_slot(self, slot: Slot) -> None:
        self.slots.free(slot)

    def stop(self, key: str, reason: Reason) -> bool:
        """Tell every process to stop ``key``'s live streams; True if another process holds its lease.
        A failure is logged, not raised: a Stop must answer even while Redis is away."""
        if not self.link.subscribed.is_set():
            log.event("coord_stop_failed", logging.WARNING, session=key, error=self.link.error)
            return False
        try:
            holder = self.leases.holder(key)
            self.control.stop(key, reason)
        except CoordinationUnavailable as e:
            log.event("coord_stop_failed", logging.WARNING, session=key, error=e.message)
            return False
        return holder is not None and not self.link.ours(holder)

    # the process's

    def held(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` (session ids) whose lease a live stream holds, in any process."""
        return self.leases.held_of(keys)

    def health(self) -> dict:
        return self.link.health()

    def close(self, timeout: float) -> bool:
        """Stop the threads, waiting up to ``timeout``; True if they ended."""
        self.link.closing.set()
        deadline = time.monotonic() + timeout
        threads = [*self.pumps.close(), self._renewer, self._listener]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.link.close()
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.event("coord_threads_left", logging.WARNING, threads=",".join(alive))
        return not alive

    def _renew_loop(self) -> None:
        """Heartbeat this process's liveness key; every third of the lease TTL renew the slots and
        leases of its live streams (and cancel a stream whose lease another owner holds)."""
        ttl_ms = self.leases.ttl_ms
        beat = self.liveness.ttl_ms / 1000 / BEATS_PER_TTL
        every = max(1, round(ttl_ms / 3000 / beat)) if beat < ttl_ms / 3000 else 1
        beats = 0
        while not self.link.closing.wait(min(beat, ttl_ms / 3000)):
            self.liveness.beat()
            beats += 1
            if beats % every == 0:
                self.slots.renew()
                self.leases.renew()
