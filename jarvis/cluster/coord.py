"""Coordination of several Jarvis processes through Redis (``JARVIS_REDIS_URL``).

Each process keeps its own registry for the streams it runs; Redis adds what
one process cannot see alone:

- a **lease** per session (``SET key owner NX PX ttl``): a worker holds it
  for the whole of its upstream call, renews it while it lives and releases
  it with a compare-and-delete script, so one session's upstream calls never
  overlap, whichever processes serve them. A dead owner's lease expires.
- a **slot** per stream of an account (a sorted set per user whose members expire), so
  ``JARVIS_MAX_STREAMS_PER_USER`` counts the account's streams in every process.
- a **control channel** (pub/sub): a prompt tells every process to cancel the
  session's older streams; a Stop or delete tells them to stop it; a release
  wakes the processes waiting for that lease; a reader in another process
  attaches to a live answer (``mirror.py``) and detaches.

Prompts are ordered by a **ticket** taken from Redis's clock when they arrive
(strictly increasing per session). A cancel carries the ticket it applies
below, so a late message never cancels a newer prompt, and a waiter that finds
a newer prompt holding the lease ends as superseded.

Each process also keeps a **liveness key** (``jarvis:alive:<process>``), much
shorter-lived than a lease and renewed by the same thread as a heartbeat: a
waiter that finds the lease held by a process whose key has gone (killed, host
lost) takes the lease over at once instead of waiting for it to expire. A
waiter still kept out when its supersede deadline passes takes the lease over
too, as a local successor goes ahead past a predecessor that will not end: one
deadline, one outcome, with Redis or without.

Every call has a socket timeout, and a process holds at most a bounded pool of
connections (a call waits for a free one no longer than the timeout); when
Redis cannot be reached a new prompt is refused at once
(``CoordinationUnavailable``) while live answers go on. A value in Jarvis's
keys that does not parse counts as missing (and is logged), and a control
message that cannot be handled is logged and skipped: the listener stays on.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable

from .. import log
from ..cancel import CancelScope
from ..config import ConfigError
from ..errors import CoordinationUnavailable, JarvisError, TooManyStreams
from ..status import Reason
from .mirror import MIRROR_MAXLEN, MIRROR_TTL_MS, READ_COUNT, READER_TTL_MS, Pump, mirror_key, reader_key

CHANNEL = "jarvis:control"
WAIT_POLL_S = 0.1  # a waiter looks again this often: a lease that expired sends no message
RETRY_S = 0.5  # the listener resubscribes this often while Redis is away
HELD_BATCH = 500  # lease keys per MGET when a starting process looks for live answers
TICKET_TTL_MS = 86_400_000  # a session's last ticket is kept a day: longer than any answer
BEATS_PER_TTL = 4  # heartbeats per liveness TTL: a process is seen dead after missing this many
TICKET_DIGITS = 20  # a ticket is Redis's clock in microseconds: 16 digits today

# a ticket from Redis's clock in microseconds, above the session's last (so it survives a restart of
# Redis), published with the message: every stream of the session with a lower ticket ends. A prompt
# ("cancel") keeps it as the session's last; a Stop needs only the ordering.
TICKET = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local v = redis.pcall('get', KEYS[1])
local last = type(v) == 'string' and tonumber(v) or 0  -- garbage, or a key of another type: none
if now <= last then now = last + 1 end
local ticket = string.format('%.0f', now)
if ARGV[3] == 'cancel' then redis.call('set', KEYS[1], ticket, 'PX', ARGV[4]) end
redis.call('publish', ARGV[1], ARGV[2] .. ticket)
return ticket
"""
# extend our lease; put it back if Redis lost it (a restart); 0 when another owner holds it
RENEW = """
local v = redis.call('get', KEYS[1])
if v == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not v then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
# take the lease from its holder ARGV[1] while it still holds it; with KEYS[2] (the holder's process's
# liveness key) only if that key has gone: the process died
TAKE = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
if #KEYS > 1 and redis.call('exists', KEYS[2]) == 1 then return 0 end
redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# delete the lease only if it is still ours, and wake the waiters; clear the record of who took it
# last if that is us (even when the lease expired under a stuck worker: this answer did end)
RELEASE = """
if redis.call('get', KEYS[2]) == ARGV[1] then redis.call('del', KEYS[2]) end
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('publish', ARGV[2], ARGV[3])
  return 1
end
return 0
"""
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


def lease_key(key: str) -> str:
    return "jarvis:lease:" + key


def owner_key(key: str) -> str:
    """Who took the session's lease last; a clean release deletes it, so one still there when the
    lease is free names an answer whose process died (or stopped renewing) before it ended."""
    return "jarvis:owner:" + key


def ticket_key(key: str) -> str:
    return "jarvis:ticket:" + key


def alive_key(process_id: str) -> str:
    """There while the process heartbeats: its absence means the process is dead."""
    return "jarvis:alive:" + process_id


class Lease:
    """One stream's claim on its session: a ticket now, the Redis lease while its worker calls upstream."""

    def __init__(self, coord: Coordinator, key: str, trace_id: str, ticket: int):
        self.coord = coord
        self.key = key
        self.ticket = ticket
        self.value = f"{coord.process_id} {trace_id} {ticket}"
        self.held = False
        self._releasing = threading.Lock()  # the worker and a cleanup that detached it may both release
        self._stream = lambda: None

    def bind(self, stream) -> None:
        """The stream a lost lease cancels (weakly held: a lease must not keep its stream alive)."""
        self._stream = weakref.ref(stream)

    def acquire(self, scope: CancelScope, deadline: float) -> bool:
        """Wait until this stream holds the lease, taking it over at ``deadline`` (monotonic) from an
        older holder; False if cancelled or superseded meanwhile."""
        return self.coord.acquire(self, scope, deadline)

    def release(self) -> None:
        """Give the lease back, if held; idempotent."""
        with self._releasing:
            held, self.held = self.held, False
        if held:
            self.coord.release(self)


class Slot:
    """One of a user's streams, counted across processes while its stream lives."""

    def __init__(self, owner, key: str, value: str, stream):
        self.redis_key = f"jarvis:streams:{owner}"
        self.member = f"{key}\t{value}"
        self._stream = weakref.ref(stream)


class Coordinator:
    """Leases and the control channel of one process; ``close()`` joins its two threads."""

    def __init__(
        self,
        url: str,
        cancel: Callable,
        lease_ttl_s: float = 10.0,
        timeout_s: float = 0.5,
        interrupt: Callable[[str], object] | None = None,
        attach: Callable | None = None,
        liveness_ttl_s: float = 1.5,
        max_connections: int = 24,
    ):
        """``cancel(key, before_ticket, reason)`` cancels this process's streams of ``key`` whose ticket
        is below ``before_ticket``; ``interrupt(trace_id)`` marks the stored answer of another
        process's stream, whose lease this process took over, as interrupted; ``attach(key,
        last_event_id, client_gone)`` gives a Tap of this process's live answer for a remote reader.
        ``max_connections`` bounds each of the two pools (the threads that may call at once)."""
        try:
            import redis  # the scale extra: only a process with JARVIS_REDIS_URL imports it
        except ImportError:
            raise ConfigError("JARVIS_REDIS_URL needs the redis client: pip install jarvis[scale]") from None

        self._errors = (redis.ConnectionError, redis.TimeoutError)

        def client(socket_timeout: float):
            # a blocking pool: a call waits for a free connection (as long as a reply may take)
            # instead of opening one more; past that it fails as an unreachable Redis would
            try:
                pool = redis.BlockingConnectionPool.from_url(
                    url, max_connections=max_connections, timeout=timeout_s, socket_timeout=socket_timeout,
                    socket_connect_timeout=timeout_s, decode_responses=True,
                )  # fmt: skip
            except ValueError as e:  # the message names the part, never the password
                raise ConfigError(f"JARVIS_REDIS_URL is not a Redis URL: {e}") from None
            return redis.Redis(connection_pool=pool)

        self.redis = client(timeout_s)
        self.blocking = client(timeout_s + 1.0)  # for XREAD BLOCK: waits out the block, and no longer
        self.cancel = cancel
        self.interrupt = interrupt
        self.attach = attach
        self._pumps: dict[str, Pump] = {}  # remote reader -> the thread mirroring its answer
        self.ttl_ms = max(1, int(lease_ttl_s * 1000))
        self.alive_ms = max(1, int(liveness_ttl_s * 1000))
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._ticket = self.redis.register_script(TICKET)
        self._renew = self.redis.register_script(RENEW)
        self._release = self.redis.register_script(RELEASE)
        self._take = self.redis.register_script(TAKE)
        self._slot = self.redis.register_script(SLOT)
        self._slot_renew = self.redis.register_script(SLOT_RENEW)
        self._lock = threading.Lock()
        self._held: set[Lease] = set()
        self._slots: set[Slot] = set()
        self._waiting: dict[str, set[threading.Event]] = {}  # key -> events of its waiters
        self._closed = threading.Event()
        self._subscribed = threading.Event()  # the listener hears the channel
        self.error: str | None = None  # the last failure, while it lasts
        self._pubsub = None
        # daemons only so that a host that never calls shutdown (plain waitress) can still exit;
        # close() joins them
        self._listener = threading.Thread(target=self._listen, name="jarvis-coord-listen", daemon=True)
        self._renewer = threading.Thread(target=self._renew_loop, name="jarvis-coord-renew", daemon=True)
        self._listener.start()
        self._renewer.start()

    # the request side

    def claim(self, key: str, trace_id: str) -> Lease:
        """A ticket for a new prompt of ``key``; every process cancels the session's older streams.
        Raises CoordinationUnavailable at once while Redis cannot be reached."""
        if not self._subscribed.is_set():
            raise CoordinationUnavailable(f"Redis cannot be reached: {self.error or 'not connected yet'}")
        message = self._message("cancel", key, Reason.SUPERSEDED)
        ticket = int(self._call(self._ticket, keys=[ticket_key(key)], args=message))
        return Lease(self, key, trace_id, ticket)

    def take_slot(self, stream, limit: int) -> Slot:
        """Count ``stream`` among its owner's streams in every process; TooManyStreams when the owner
        already has ``limit`` sessions streaming (a prompt to one of them supersedes, and is let in)."""
        if not self._subscribed.is_set():
            raise CoordinationUnavailable(f"Redis cannot be reached: {self.error or 'not connected yet'}")
        slot = Slot(stream.owner, stream.key, f"{self.process_id} {stream.trace_id}", stream)
        count = int(
            self._call(self._slot, keys=[slot.redis_key], args=[slot.member, stream.key, limit, self.ttl_ms])
        )
        if count >= 0:
            raise TooManyStreams(
                f"this account already has {count} answers streaming; stop one or wait for it to end"
            )
        with self._lock:
            self._slots.add(slot)
        return slot

    def free_slot(self, slot: Slot) -> None:
        """The slot's stream has ended: it counts no more."""
        with self._lock:
            self._slots.discard(slot)
        try:
            self._call(self.redis.zrem, slot.redis_key, slot.member)
        except CoordinationUnavailable as e:  # the member expires on its own within the TTL
            log.event("coord_slot_free_failed", logging.WARNING, error=e.message)

    def stop(self, key: str, reason: Reason) -> bool:
        """Tell every process to stop ``key``'s live streams; True if another process holds its lease.
        A failure is logged, not raised: a Stop must answer even while Redis is away."""
        if not self._subscribed.is_set():
            log.event("coord_stop_failed", logging.WARNING, session=key, error=self.error)
            return False
        try:
            holder = self._call(self.redis.get, lease_key(key))
            self._call(self._ticket, keys=[ticket_key(key)], args=self._message("stop", key, reason))
        except CoordinationUnavailable as e:
            log.event("coord_stop_failed", logging.WARNING, session=key, error=e.message)
            return False
        return holder is not None and not holder.startswith(self.process_id + " ")

    def held(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` (session ids) whose lease a live stream holds, in any process."""
        keys = list(keys)
        found = set()
        for i in range(0, len(keys), HELD_BATCH):
            batch = keys[i : i + HELD_BATCH]
            values = self._call(self.redis.mget, [lease_key(k) for k in batch])
            found.update(k for k, v in zip(batch, values, strict=True) if v is not None)
        return found

    def health(self) -> dict:
        return {"ok": self._subscribed.is_set() and self.error is None, "error": self.error}

    # rejoining across processes (mirror.py): the reader's side

    def lease_holder(self, key: str) -> str | None:
        """The lease's value ("process stream ticket") while an answer of ``key`` holds it."""
        if not self._subscribed.is_set():
            raise CoordinationUnavailable(f"Redis cannot be reached: {self.error or 'not connected yet'}")
        return self._call(self.redis.get, lease_key(key))

    def mirror_attach(self, key: str, owner: str, reader: str, last_event_id: str) -> None:
        """Ask ``owner`` (a process id) to mirror ``key``'s answer to ``reader``'s stream."""
        if "\t" in last_event_id or len(last_event_id) > 200:
            last_event_id = ""  # not an id Jarvis sent: replay from the start
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(reader_key(reader), "1", px=READER_TTL_MS)
        pipe.publish(CHANNEL, f"attach\t{key}\t{owner}\t{reader}\t{last_event_id}")
        self._call(pipe.execute)

    def mirror_read(self, reader: str, after: str, wait_s: float) -> list:
        """Up to READ_COUNT batches after ``after``, waiting up to ``wait_s`` for the first."""
        block_ms = max(1, int(wait_s * 1000))
        found = self._call(self.blocking.xread, {mirror_key(reader): after}, count=READ_COUNT, block=block_ms)
        return found[0][1] if found else []

    def reader_renew(self, reader: str, key: str, owner: str) -> bool:
        """Keep the reader's key alive; False when process ``owner`` holds ``key``'s lease no more."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.pexpire(reader_key(reader), READER_TTL_MS)
        pipe.get(lease_key(key))
        holder = self._call(pipe.execute)[1]
        return holder is not None and holder.startswith(owner + " ")

    def mirror_detach(self, reader: str) -> None:
        """The reader left: its owner stops mirroring; its keys go. Logged, not raised."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.publish(CHANNEL, f"detach\t{reader}")
        pipe.delete(reader_key(reader), mirror_key(reader))
        try:
            self._call(pipe.execute)
        except CoordinationUnavailable as e:  # the owner sees the reader's key expire
            log.event("mirror_detach_failed", logging.WARNING, reader=reader, error=e.message)

    def closing(self) -> bool:
        """This process is shutting down: its remote readers end."""
        return self._closed.is_set()

    # rejoining across processes: the owner's side

    def _serve(self, key: str, reader: str, last_event_id: str | None) -> None:
        """A reader elsewhere attaches to ``key``'s answer here: a Tap, and a pump to its stream."""
        gone = threading.Event()
        try:
            tap = self.attach(key, last_event_id, gone.is_set) if self.attach else None
        except TooManyStreams as e:
            self._refuse(reader, error=e.code, message=e.message)
            return
        if tap is not None:
            pump = Pump(self, reader, tap, gone, self._forget)
            with self._lock:  # close() joins every pump started before it set _closed
                if not self._closed.is_set():
                    self._pumps[reader] = pump
                    pump.thread.start()
                    return
            tap.close()
        self._refuse(reader, none="1")  # the reader answers 204 now

    def _refuse(self, reader: str, **fields) -> None:
        try:
            self.mirror_add(mirror_key(reader), "", True, **fields)
        except CoordinationUnavailable as e:  # the reader gives up after its wait
            log.event("mirror_failed", logging.WARNING, reader=reader, error=e.message)

    def _forget(self, pump: Pump) -> None:
        with self._lock:
            self._pumps.pop(pump.reader, None)

    def mirror_add(self, key: str, data: str, ended: bool, **fields) -> None:
        """One batch of frames for a remote reader: one round trip."""
        fields = {"d": data, **({"end": "1"} if ended else {}), **fields}
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, fields, maxlen=MIRROR_MAXLEN, approximate=True)
        pipe.pexpire(key, MIRROR_TTL_MS)
        self._call(pipe.execute)

    def reader_alive(self, reader: str) -> bool:
        return bool(self._call(self.redis.exists, reader_key(reader)))

    # the worker side

    def acquire(self, lease: Lease, scope: CancelScope, deadline: float) -> bool:
        woken = threading.Event()
        with self._lock:
            self._waiting.setdefault(lease.key, set()).add(woken)
        undo = scope.on_cancel(woken.set)
        looks, displaced = 0, None
        try:
            while not scope.cancelled:
                woken.clear()
                holder = self._call(
                    self.redis.set, lease_key(lease.key), lease.value, nx=True, px=self.ttl_ms, get=True
                )
                if holder is None:  # it was free: ours now
                    return self._hold(lease, displaced)
                ticket = _ticket_of(holder)
                if ticket is not None and ticket > lease.ticket:
                    return False  # a newer prompt holds it: this one is superseded
                process = holder.split(" ", 1)[0]
                left = deadline - time.monotonic()
                if ticket is None:  # not a value Jarvis wrote: as if the lease were free
                    log.event("coord_garbage", logging.WARNING, key=lease_key(lease.key), value=holder[:200])
                    why, keys = "garbage", [lease_key(lease.key)]
                elif process != self.process_id:  # taken at once if that process is dead
                    displaced = holder
                    why, keys = "dead", [lease_key(lease.key), alive_key(process)]
                else:
                    why, keys = None, []
                if left <= 0:  # the deadline: go ahead, as past a local predecessor that will not end
                    why, keys = why or "deadline", [lease_key(lease.key)]
                if why is not None and self._call(
                    self._take, keys=keys, args=[holder, lease.value, self.ttl_ms]
                ):
                    log.event(
                        "lease_taken_over", logging.WARNING, session=lease.key, holder=holder[:200], why=why
                    )
                    return self._hold(lease, None if why == "garbage" else holder)
                looks += 1
                if looks == 2:  # an older holder still: its process may have missed the claim's cancel
                    message = self._message("cancel", lease.key, Reason.SUPERSEDED)[1] + str(lease.ticket)
                    self._call(self.redis.publish, CHANNEL, message)
                # a release, a cancel, or a look at an expired lease or a dead holder
                woken.wait(min(WAIT_POLL_S, left) if left > 0 else WAIT_POLL_S / 10)
            return False
        finally:
            undo()
            with self._lock:
                waiters = self._waiting.get(lease.key)
                waiters.discard(woken)
                if not waiters:
                    del self._waiting[lease.key]

    def _hold(self, lease: Lease, displaced: str | None) -> bool:
        with self._lock:
            self._held.add(lease)
        lease.held = True
        previous = self._left_behind(lease)
        self._took_over(displaced or previous)
        return True

    def _left_behind(self, lease: Lease) -> str | None:
        """Record this lease as the session's last; return the one before it if it was never given
        back by another process (its lease expired before this prompt came: that process died)."""
        try:
            previous = self._call(
                self.redis.set, owner_key(lease.key), lease.value, px=TICKET_TTL_MS, get=True
            )
        except CoordinationUnavailable as e:  # the answer goes on; only the old answer's mark waits
            log.event("coord_owner_record_failed", logging.WARNING, session=lease.key, error=e.message)
            return None
        if previous is None or previous.startswith(self.process_id + " "):
            return None
        if _ticket_of(previous) is None:
            log.event("coord_garbage", logging.WARNING, key=owner_key(lease.key), value=previous[:200])
            return None
        return previous

    def _took_over(self, holder: str | None) -> None:
        """An answer of another process held the lease before: if that process died, its answer is
        still marked streaming; say it was interrupted (a live process's final save overwrites it)."""
        if holder is None or self.interrupt is None:
            return
        try:
            self.interrupt(holder.split(" ")[1])
        except (IndexError, JarvisError) as e:  # a foreign value, or the database refused
            log.event("coord_interrupt_failed", logging.WARNING, holder=holder[:200], error=str(e))

    def release(self, lease: Lease) -> None:
        with self._lock:
            self._held.discard(lease)
        try:
            released = f"released\t{lease.key}"
            keys = [lease_key(lease.key), owner_key(lease.key)]
            self._call(self._release, keys=keys, args=[lease.value, CHANNEL, released])
        except CoordinationUnavailable as e:  # the lease expires on its own within the TTL
            log.event("coord_release_failed", logging.WARNING, session=lease.key, error=e.message)

    # threads

    def close(self, timeout: float) -> bool:
        """Stop both threads, waiting up to ``timeout``; True if they ended."""
        self._closed.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            pumps = list(self._pumps.values())
        for pump in pumps:
            pump.gone.set()
        threads = [p.thread for p in pumps] + [self._renewer, self._listener]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.redis.close()
        self.blocking.close()
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.event("coord_threads_left", logging.WARNING, threads=",".join(alive))
        return not alive

    def _renew_loop(self) -> None:
        """Heartbeat this process's liveness key; every third of the lease TTL renew the leases of
        its live streams (and cancel a stream whose lease another owner holds) and their slots."""
        beat = self.alive_ms / 1000 / BEATS_PER_TTL
        every = max(1, round(self.ttl_ms / 3000 / beat)) if beat < self.ttl_ms / 3000 else 1
        beats = 0
        while not self._closed.wait(min(beat, self.ttl_ms / 3000)):
            self._heartbeat()
            beats += 1
            if beats % every == 0:
                self._renew_held()

    def _heartbeat(self) -> None:
        """Say this process lives, for less than a lease: a dead one's leases are taken at once."""
        try:
            if not self._call(self.redis.pexpire, alive_key(self.process_id), self.alive_ms):
                self._call(self.redis.set, alive_key(self.process_id), "1", px=self.alive_ms)
        except CoordinationUnavailable:
            pass  # Redis away: the listener says so; the key is put back when it returns

    def _renew_held(self) -> None:
        with self._lock:
            held = list(self._held)
            slots = list(self._slots)
        for slot in slots:
            stream = slot._stream()
            if stream is None or stream.scope.cancelled:
                continue  # a cancelled stream stops counting within the TTL, even if stuck
            try:
                self._call(self._slot_renew, keys=[slot.redis_key], args=[slot.member, self.ttl_ms])
            except CoordinationUnavailable:
                continue
        for lease in held:
            stream = lease._stream()
            if stream is None or stream.scope.cancelled:
                continue  # a worker stuck past its cancel must not hold the session forever
            try:
                kept = self._call(self._renew, keys=[lease_key(lease.key)], args=[lease.value, self.ttl_ms])
            except CoordinationUnavailable:
                continue  # Redis away: the answer goes on; the lease is put back when it returns
            if not kept and lease.held:
                log.event("lease_lost", logging.WARNING, session=lease.key)
                stream.cancel(Reason.SUPERSEDED)

    def _listen(self) -> None:
        """Hear the control channel until closed; resubscribe while Redis is away."""
        while not self._closed.is_set():
            try:
                if self._pubsub is None:
                    self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    self._pubsub.subscribe(CHANNEL)
                    self._heartbeat()  # alive before any lease of ours can be taken
                    self._subscribed.set()
                    self.error = None
                message = self._pubsub.get_message(timeout=0.2)
                if message is not None:
                    self._handle_safely(message["data"])
            except self._errors as e:
                self._lost(e)
                self._closed.wait(RETRY_S)
            except Exception as e:  # a refused SUBSCRIBE, or a bug in the loop: say so, and do not spin
                log.log.exception("coordination listener failed")
                self._lost(e)
                self._closed.wait(RETRY_S)
        self._lost(None)

    def _lost(self, error: Exception | None) -> None:
        self._subscribed.clear()
        if error is not None:
            if self.error is None:
                log.event("coord_unavailable", logging.WARNING, error=str(error))
            self.error = f"{type(error).__name__}: {error}"
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None

    def _handle_safely(self, data) -> None:
        """Handle one message; one that fails is logged and skipped: the listener must hear the next
        (a Stop), whatever a message carried."""
        try:
            self._handle(data)
        except Exception:
            log.log.exception("control message failed: %r", str(data)[:200])

    def _handle(self, data: str) -> None:
        op, _, rest = data.partition("\t")
        fields = rest.split("\t")
        if op == "released" and len(fields) == 1:
            with self._lock:
                waiters = list(self._waiting.get(fields[0], ()))
            for woken in waiters:
                woken.set()
        elif op in ("cancel", "stop") and len(fields) == 4 and _number(fields[3], TICKET_DIGITS) is not None:
            key, reason, _, ticket = fields
            try:
                reason = Reason(reason)
            except ValueError:  # a misspelt reason must never end an answer as "stopped"
                log.event("coord_message_ignored", logging.WARNING, message=data[:200])
                return
            self.cancel(key, int(ticket), reason)
        elif op == "attach" and len(fields) == 4:
            key, owner, reader, last = fields
            if owner == self.process_id:
                self._serve(key, reader, last or None)
        elif op == "detach" and len(fields) == 1:
            with self._lock:
                pump = self._pumps.get(fields[0])
            if pump is not None:
                pump.gone.set()
        else:  # another program on the channel: not ours to act on
            log.event("coord_message_ignored", logging.WARNING, message=data[:200])

    def _message(self, op: str, key: str, reason: str) -> list:
        # the script appends the ticket: "op key reason process ticket"
        return [CHANNEL, f"{op}\t{key}\t{reason}\t{self.process_id}\t", op, TICKET_TTL_MS]

    def _call(self, fn, *args, **kwargs):
        """One Redis call; a lost or slow Redis becomes CoordinationUnavailable."""
        try:
            result = fn(*args, **kwargs)
        except self._errors as e:
            self.error = f"{type(e).__name__}: {e}"
            raise CoordinationUnavailable(f"Redis cannot be reached: {e}") from e
        self.error = None
        return result


def _ticket_of(value: str) -> int | None:
    """The ticket of a lease or owner value ("process trace ticket"); None when it does not parse."""
    parts = value.split(" ")
    return _number(parts[2], TICKET_DIGITS) if len(parts) == 3 else None


def _number(text: str, digits: int) -> int | None:
    """``text`` as a number when it is 1 to ``digits`` ASCII digits, else None."""
    return int(text) if 0 < len(text) <= digits and text.isascii() and text.isdigit() else None
