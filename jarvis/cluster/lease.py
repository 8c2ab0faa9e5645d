"""Session leases across processes, ordered by tickets, and the liveness of each process.

A **lease** per session (``SET jarvis:lease:<session> "process trace ticket" NX PX ttl``): a
worker holds it for the whole of its upstream call, renews it while it lives and releases it
with a compare-and-delete script, so one session's upstream calls never overlap, whichever
processes serve them. A dead owner's lease expires. A waiter that finds a newer prompt's ticket
in the lease ends as superseded.

Each process also keeps a **liveness key** (``jarvis:alive:<process>``), much shorter-lived than a
lease and renewed by the coordinator's renewer as a heartbeat: a waiter that finds the lease held
by a process whose key has gone (killed, host lost) takes the lease over at once instead of
waiting for it to expire. A waiter still kept out when its supersede deadline passes takes the
lease over too, as a local successor goes ahead past a predecessor that will not end: one
deadline, one outcome, with Redis or without. A value in Jarvis's keys that does not parse counts
as missing (and is logged).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable

from .. import log
from ..cancel import CancelScope
from ..errors import CoordinationUnavailable, JarvisError
from ..status import Reason
from . import LiveStream
from .control import CHANNEL, TICKET_DIGITS, TICKET_TTL_MS, Control, number, released
from .link import Link

WAIT_POLL_S = 0.1  # a waiter looks again this often: a lease that expired sends no message
HELD_BATCH = 500  # lease keys per MGET when a starting process looks for live answers

# Why scripts and not redis-py's Lock: a Lock's token is opaque and its waiters are equal, while a
# lease's value carries the prompt's ticket (a waiter behind a newer ticket gives up, superseded),
# a waiter takes the lease over from a holder whose process's liveness key has gone (a condition on
# a second key), a renewal puts back a lease that Redis lost in a restart (Lock.extend refuses a
# missing key), and a release clears the owner record and wakes the waiters (PUBLISH) in the same
# atomic step. The plain steps stay plain commands: SET NX GET to take a free lease, SET GET for
# the owner record, MGET to find live answers.

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


def lease_key(key: str) -> str:
    return "jarvis:lease:" + key


def owner_key(key: str) -> str:
    """Who took the session's lease last; a clean release deletes it, so one still there when the
    lease is free names an answer whose process died (or stopped renewing) before it ended."""
    return "jarvis:owner:" + key


def alive_key(process_id: str) -> str:
    """There while the process heartbeats: its absence means the process is dead."""
    return "jarvis:alive:" + process_id


def ticket_of(value: str) -> int | None:
    """The ticket of a lease or owner value ("process trace ticket"); None when it does not parse."""
    parts = value.split(" ")
    return number(parts[2], TICKET_DIGITS) if len(parts) == 3 else None


class SessionLease:
    """One stream's claim on its session (the ``Lease`` protocol): a ticket now, the Redis lease
    while its worker calls upstream."""

    def __init__(self, leases: Leases, key: str, trace_id: str, ticket: int):
        self.leases = leases
        self.key = key
        self.ticket = ticket
        self.value = f"{leases.link.process_id} {trace_id} {ticket}"
        self.held = False
        self._releasing = threading.Lock()  # the worker and a cleanup that detached it may both release
        self.stream: Callable[[], LiveStream | None] = lambda: None

    def bind(self, stream: LiveStream) -> None:
        """The stream a lost lease cancels (weakly held: a lease must not keep its stream alive)."""
        self.stream = weakref.ref(stream)

    def acquire(self, scope: CancelScope, deadline: float) -> bool:
        """Wait until this stream holds the lease, taking it over at ``deadline`` (monotonic) from an
        older holder; False if cancelled or superseded meanwhile."""
        return self.leases.acquire(self, scope, deadline)

    def release(self) -> None:
        """Give the lease back, if held; idempotent."""
        with self._releasing:
            held, self.held = self.held, False
        if held:
            self.leases.release(self)


class Liveness:
    """This process's heartbeat: a key that lives for less than a lease."""

    def __init__(self, link: Link, ttl_s: float):
        self.link = link
        self.ttl_ms = max(1, int(ttl_s * 1000))

    def beat(self) -> None:
        """Say this process lives: a dead one's leases are taken at once."""
        key = alive_key(self.link.process_id)
        try:
            if not self.link.call(self.link.redis.pexpire, key, self.ttl_ms):
                self.link.call(self.link.redis.set, key, "1", px=self.ttl_ms)
        except CoordinationUnavailable:
            pass  # Redis away: the listener says so; the key is put back when it returns


class Waiters:
    """The events of the streams waiting for each session's lease, set by a ``released`` message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = {}

    def add(self, key: str) -> threading.Event:
        woken = threading.Event()
        with self._lock:
            self._waiting.setdefault(key, set()).add(woken)
        return woken

    def discard(self, key: str, woken: threading.Event) -> None:
        with self._lock:
            waiters = self._waiting.get(key)
            waiters.discard(woken)
            if not waiters:
                del self._waiting[key]

    def wake(self, key: str) -> None:
        with self._lock:
            waiters = list(self._waiting.get(key, ()))
        for woken in waiters:
            woken.set()


class Owners:
    """The record of who took each session's lease last (``owner_key``), and the mark of an answer
    a dead process left behind."""

    def __init__(self, link: Link, interrupt: Callable[[str], object] | None):
        """``interrupt(trace_id)`` marks the stored answer of another process's stream, whose lease
        this process took over, as interrupted."""
        self.link = link
        self.interrupt = interrupt

    def record(self, lease: SessionLease, displaced: str | None) -> None:
        """``lease`` is held now: record it; mark the answer it took the lease from, or the one
        before it whose process never gave the lease back, as interrupted."""
        previous = self._left_behind(lease)
        self._took_over(displaced or previous)

    def _left_behind(self, lease: SessionLease) -> str | None:
        """Record this lease as the session's last; return the one before it if it was never given
        back by another process (its lease expired before this prompt came: that process died)."""
        try:
            previous = self.link.call(
                self.link.redis.set, owner_key(lease.key), lease.value, px=TICKET_TTL_MS, get=True
            )
        except CoordinationUnavailable as e:  # the answer goes on; only the old answer's mark waits
            log.event("coord_owner_record_failed", logging.WARNING, session=lease.key, error=e.message)
            return None
        if previous is None or self.link.ours(previous):
            return None
        if ticket_of(previous) is None:
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


class Leases:
    """The leases of this process's streams: claim, acquire, renew, release."""

    def __init__(
        self,
        link: Link,
        control: Control,
        waiters: Waiters,
        ttl_s: float,
        interrupt: Callable[[str], object] | None = None,
    ):
        """``interrupt(trace_id)``: see ``Owners``."""
        self.link = link
        self.control = control
        self.owners = Owners(link, interrupt)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.waiters = waiters  # woken by the channel's released messages
        self._renew = link.redis.register_script(RENEW)
        self._release = link.redis.register_script(RELEASE)
        self._take = link.redis.register_script(TAKE)
        self._lock = threading.Lock()
        self._held: set[SessionLease] = set()

    def claim(self, key: str, trace_id: str) -> SessionLease:
        """A ticket for a new prompt of ``key``; every process cancels the session's older streams.
        Raises CoordinationUnavailable at once while Redis cannot be reached."""
        self.link.require()
        return SessionLease(self, key, trace_id, self.control.cancel(key))

    def acquire(self, lease: SessionLease, scope: CancelScope, deadline: float) -> bool:
        woken = self.waiters.add(lease.key)
        undo = scope.on_cancel(woken.set)
        looks, displaced = 0, None
        try:
            while not scope.cancelled:
                woken.clear()
                holder = self.link.call(
                    self.link.redis.set, lease_key(lease.key), lease.value, nx=True, px=self.ttl_ms, get=True
                )
                if holder is None:  # it was free: ours now
                    return self._hold(lease, displaced)
                ticket = ticket_of(holder)
                if ticket is not None and ticket > lease.ticket:
                    return False  # a newer prompt holds it: this one is superseded
                if ticket is not None and holder.split(" ", 1)[0] != self.link.process_id:
                    displaced = holder
                left = deadline - time.monotonic()
                why, keys = self._takeover(lease, holder, ticket, left)
                if why is not None and self.link.call(
                    self._take, keys=keys, args=[holder, lease.value, self.ttl_ms]
                ):
                    log.event(
                        "lease_taken_over", logging.WARNING, session=lease.key, holder=holder[:200], why=why
                    )
                    return self._hold(lease, None if why == "garbage" else holder)
                looks += 1
                if looks == 2:  # an older holder still: its process may have missed the claim's cancel
                    self.control.cancel_again(lease.key, lease.ticket)
                # a release, a cancel, or a look at an expired lease or a dead holder
                woken.wait(min(WAIT_POLL_S, left) if left > 0 else WAIT_POLL_S / 10)
            return False
        finally:
            undo()
            self.waiters.discard(lease.key, woken)

    def _takeover(
        self, lease: SessionLease, holder: str, ticket: int | None, left: float
    ) -> tuple[str | None, list[str]]:
        """Why ``lease`` may take the lease from ``holder`` now (None: it may not), and the keys the
        take looks at."""
        process = holder.split(" ", 1)[0]
        if ticket is None:  # not a value Jarvis wrote: as if the lease were free
            log.event("coord_garbage", logging.WARNING, key=lease_key(lease.key), value=holder[:200])
            why, keys = "garbage", [lease_key(lease.key)]
        elif process != self.link.process_id:  # taken at once if that process is dead
            why, keys = "dead", [lease_key(lease.key), alive_key(process)]
        else:
            why, keys = None, []
        if left <= 0:  # the deadline: go ahead, as past a local predecessor that will not end
            why, keys = why or "deadline", [lease_key(lease.key)]
        return why, keys

    def _hold(self, lease: SessionLease, displaced: str | None) -> bool:
        with self._lock:
            self._held.add(lease)
        lease.held = True
        self.owners.record(lease, displaced)
        return True

    def release(self, lease: SessionLease) -> None:
        with self._lock:
            self._held.discard(lease)
        try:
            keys = [lease_key(lease.key), owner_key(lease.key)]
            self.link.call(self._release, keys=keys, args=[lease.value, CHANNEL, released(lease.key)])
        except CoordinationUnavailable as e:  # the lease expires on its own within the TTL
            log.event("coord_release_failed", logging.WARNING, session=lease.key, error=e.message)

    def renew(self) -> None:
        """Renew the leases of this process's live streams; cancel a stream whose lease another
        owner holds."""
        with self._lock:
            held = list(self._held)
        for lease in held:
            stream = lease.stream()
            if stream is None or stream.scope.cancelled:
                continue  # a worker stuck past its cancel must not hold the session forever
            try:
                kept = self.link.call(
                    self._renew, keys=[lease_key(lease.key)], args=[lease.value, self.ttl_ms]
                )
            except CoordinationUnavailable:
                continue  # Redis away: the answer goes on; the lease is put back when it returns
            if not kept and lease.held:
                log.event("lease_lost", logging.WARNING, session=lease.key)
                stream.cancel(Reason.SUPERSEDED)

    def holder(self, key: str) -> str | None:
        """The lease's value ("process stream ticket") while an answer of ``key`` holds it."""
        self.link.require()
        return self.link.call(self.link.redis.get, lease_key(key))

    def held_of(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` (session ids) whose lease a live stream holds, in any process."""
        keys = list(keys)
        found = set()
        for i in range(0, len(keys), HELD_BATCH):
            batch = keys[i : i + HELD_BATCH]
            values = self.link.call(self.link.redis.mget, [lease_key(k) for k in batch])
            found.update(k for k, v in zip(batch, values, strict=True) if v is not None)
        return found
