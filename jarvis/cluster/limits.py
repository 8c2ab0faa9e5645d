"""An account's streams counted in every process (``JARVIS_MAX_STREAMS_PER_USER`` across Redis).

Each stream of an account is a member of a sorted set (``jarvis:streams:<account>``) scored by when
it expires, added when the prompt is admitted, renewed with the leases and removed when the answer
ends; a member nobody renews (its process died) stops counting within the lease TTL. The sign-in
counts across processes are not here: Flask-Limiter keeps them in the same Redis (``web/auth.py``).
"""

from __future__ import annotations

import logging
import threading
import weakref

from .. import log
from ..errors import CoordinationUnavailable, TooManyStreams
from . import LiveStream, Slot
from .link import Link

# one user's streams across processes: a sorted set of "session<TAB>owner trace" scored by when
# each expires (Redis's clock, ms). Expired members go first, so a dead process's streams stop
# counting within the TTL. A session already streaming is admitted: its new prompt supersedes.
# Returns -1 when admitted, else the count of the user's streaming sessions.
SLOT = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
local sessions, n = {}, 0
for _, m in ipairs(redis.call('zrange', KEYS[1], 0, -1)) do
  local s = string.match(m, '^[^\t]*')
  if not sessions[s] then sessions[s] = true n = n + 1 end
end
if not sessions[ARGV[2]] and n >= tonumber(ARGV[3]) then return n end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('pexpire', KEYS[1], ARGV[4])
return -1
"""
# push a live stream's expiry on (only while its member is there: a freed slot stays freed)
SLOT_RENEW = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zadd', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('pexpire', KEYS[1], ARGV[2])
"""


class UserSlot:
    """One of a user's streams, counted across processes while its stream lives (the ``Slot``
    protocol)."""

    def __init__(self, owner: int | None, key: str | None, value: str, stream: LiveStream):
        self.redis_key = f"jarvis:streams:{owner}"
        self.member = f"{key}\t{value}"
        self.stream = weakref.ref(stream)


class Slots:
    """This process's streams in their accounts' counts: take, renew, free."""

    def __init__(self, link: Link, ttl_s: float):
        self.link = link
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._slot = link.redis.register_script(SLOT)
        self._slot_renew = link.redis.register_script(SLOT_RENEW)
        self._lock = threading.Lock()
        self._slots: set[UserSlot] = set()

    def take(self, stream: LiveStream, limit: int) -> UserSlot:
        """Count ``stream`` among its owner's streams in every process; TooManyStreams when the owner
        already has ``limit`` sessions streaming (a prompt to one of them supersedes, and is let in)."""
        self.link.require()
        slot = UserSlot(stream.owner, stream.key, f"{self.link.process_id} {stream.trace_id}", stream)
        count = int(
            self.link.call(
                self._slot, keys=[slot.redis_key], args=[slot.member, stream.key, limit, self.ttl_ms]
            )
        )
        if count >= 0:
            raise TooManyStreams(
                f"this account already has {count} answers streaming; stop one or wait for it to end"
            )
        with self._lock:
            self._slots.add(slot)
        return slot

    def free(self, slot: Slot) -> None:
        """The slot's stream has ended: it counts no more."""
        with self._lock:
            self._slots.discard(slot)
        try:
            self.link.call(self.link.redis.zrem, slot.redis_key, slot.member)
        except CoordinationUnavailable as e:  # the member expires on its own within the TTL
            log.event("coord_slot_free_failed", logging.WARNING, error=e.message)

    def renew(self) -> None:
        """Push on the expiry of this process's live streams' slots."""
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            stream = slot.stream()
            if stream is None or stream.scope.cancelled:
                continue  # a cancelled stream stops counting within the TTL, even if stuck
            try:
                self.link.call(self._slot_renew, keys=[slot.redis_key], args=[slot.member, self.ttl_ms])
            except CoordinationUnavailable:
                continue
