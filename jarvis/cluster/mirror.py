"""Rejoining a live answer that runs in another process, through Redis.

Nothing here runs for an answer nobody rejoins from elsewhere: the cost is paid
by the remote reader alone.

- The **reader** (the process that got ``GET /api/sessions/<id>/stream`` but
  has no such answer) reads the session's lease to learn which process owns
  the answer, keeps a key ``jarvis:reader:<R>`` alive while its client reads,
  publishes ``attach`` on the control channel, and reads the answer's SSE
  frames from the Redis stream ``jarvis:mirror:<R>`` (``XREAD BLOCK``, one
  heartbeat at most; a heartbeat to its client after each empty read).
- The **owner** attaches a Tap exactly as a local reader would (it holds the
  answer when the answer is detached, else it watches) and a ``Pump`` thread
  copies the Tap's frames to the mirror stream, one ``XADD`` per batch of
  events (at most one per ``BATCH_S``). It sees the reader gone when ``detach`` arrives or the reader's key
  has expired (looked at once a second), and then closes the Tap: a holder's
  leaving starts the grace again.

``Mirror`` holds the Redis side of both (one round trip a step: a pipeline where a step needs
several commands) and the reader's; ``Pumps`` the owner's.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator

from .. import log
from ..errors import CoordinationUnavailable, TooManyStreams
from ..events import End
from ..sse import HEARTBEAT
from . import Attach, Tap
from . import control as message
from .control import CHANNEL
from .lease import Leases, lease_key
from .link import Link

ANSWER_WAIT_S = 1.0  # the owner answers an attach within this, or the reader answers 204
READER_TTL_MS = 5000  # a reader's key lives this long unless renewed: a dead reader is seen
RENEW_S = 1.0  # the reader renews its key, and the owner looks at it, this often
MIRROR_TTL_MS = 60_000  # an abandoned mirror stream expires
MIRROR_MAXLEN = 1000  # batches kept per mirror stream: a reader that falls this far behind loses the oldest
READ_COUNT = 100  # batches per XREAD
BATCH_S = 0.02  # the pump sends at most one batch this often: a round trip per 20 ms, not per token


def mirror_key(reader: str) -> str:
    return "jarvis:mirror:" + reader


def reader_key(reader: str) -> str:
    return "jarvis:reader:" + reader


class Mirror:
    """The mirror's Redis side, and the reader's: attach to an answer in another process, read it."""

    def __init__(self, link: Link, leases: Leases):
        self.link = link
        self.leases = leases

    def held_elsewhere(self, session: str) -> bool:
        """Whether another process holds ``session``'s lease (runs its live answer)."""
        holder = self.leases.holder(session)
        return holder is not None and not self.link.ours(holder)

    def remote_attach(
        self,
        session: str,
        last_event_id: str | None,
        heartbeat_s: float,
        client_gone: Callable[[], bool] | None = None,
    ) -> Iterator[bytes] | None:
        """In a process without the session's live answer: the answer's frames from the process that
        owns it, or None (204) when none is live anywhere. Raises CoordinationUnavailable without Redis."""
        holder = self.leases.holder(session)
        if holder is None or self.link.ours(holder):
            return None  # nothing live, or ours and just ended
        reader, owner = secrets.token_hex(8), holder.split(" ")[0]
        self.attach(session, owner, reader, last_event_id or "")
        try:
            first = self.read(reader, "0-0", ANSWER_WAIT_S)
        except CoordinationUnavailable:
            self.detach(reader)
            raise
        if not first or first[0][1].get("none"):
            self.detach(reader)
            return None
        if first[0][1].get("error") == TooManyStreams.code:
            self.detach(reader)
            raise TooManyStreams(first[0][1].get("message", "this answer has too many readers"))
        return Frames(self, reader, _frames(self, reader, session, owner, first, heartbeat_s, client_gone))

    def attach(self, key: str, owner: str, reader: str, last_event_id: str) -> None:
        """Ask ``owner`` (a process id) to mirror ``key``'s answer to ``reader``'s stream."""
        if "\t" in last_event_id or len(last_event_id) > 200:
            last_event_id = ""  # not an id Jarvis sent: replay from the start
        pipe = self.link.redis.pipeline(transaction=False)
        pipe.set(reader_key(reader), "1", px=READER_TTL_MS)
        pipe.publish(CHANNEL, message.attach(key, owner, reader, last_event_id))
        self.link.call(pipe.execute)

    def read(self, reader: str, after: str, wait_s: float) -> list:
        """Up to READ_COUNT batches after ``after``, waiting up to ``wait_s`` for the first."""
        block_ms = max(1, int(wait_s * 1000))
        found = self.link.call(
            self.link.blocking.xread, {mirror_key(reader): after}, count=READ_COUNT, block=block_ms
        )
        return found[0][1] if found else []

    def renew_reader(self, reader: str, key: str, owner: str) -> bool:
        """Keep the reader's key alive; False when process ``owner`` holds ``key``'s lease no more."""
        pipe = self.link.redis.pipeline(transaction=False)
        pipe.pexpire(reader_key(reader), READER_TTL_MS)
        pipe.get(lease_key(key))
        holder = self.link.call(pipe.execute)[1]
        return holder is not None and holder.startswith(owner + " ")

    def detach(self, reader: str) -> None:
        """The reader left: its owner stops mirroring; its keys go. Logged, not raised."""
        pipe = self.link.redis.pipeline(transaction=False)
        pipe.publish(CHANNEL, message.detach(reader))
        pipe.delete(reader_key(reader), mirror_key(reader))
        try:
            self.link.call(pipe.execute)
        except CoordinationUnavailable as e:  # the owner sees the reader's key expire
            log.event("mirror_detach_failed", logging.WARNING, reader=reader, error=e.message)

    def closing(self) -> bool:
        """This process is shutting down: its remote readers end."""
        return self.link.closing.is_set()

    def add(self, key: str, data: str, ended: bool, **fields: str) -> None:
        """One batch of frames for a remote reader: one round trip."""
        entry = {"d": data, **({"end": "1"} if ended else {}), **fields}
        pipe = self.link.redis.pipeline(transaction=False)
        pipe.xadd(key, entry, maxlen=MIRROR_MAXLEN, approximate=True)
        pipe.pexpire(key, MIRROR_TTL_MS)
        self.link.call(pipe.execute)

    def reader_alive(self, reader: str) -> bool:
        return bool(self.link.call(self.link.redis.exists, reader_key(reader)))


class Pumps:
    """In the owner: a pump per remote reader of one of this process's answers."""

    def __init__(self, mirror: Mirror, attach: Attach | None):
        """``attach(key, last_event_id, client_gone)`` gives a Tap of this process's live answer."""
        self.mirror = mirror
        self.attach = attach
        self._lock = threading.Lock()
        self._pumps: dict[str, Pump] = {}  # remote reader -> the thread mirroring its answer

    def serve(self, key: str, reader: str, last_event_id: str | None) -> None:
        """A reader elsewhere attaches to ``key``'s answer here: a Tap, and a pump to its stream."""
        gone = threading.Event()
        try:
            tap = self.attach(key, last_event_id, gone.is_set) if self.attach else None
        except TooManyStreams as e:
            self._refuse(reader, error=e.code, message=e.message)
            return
        if tap is not None:
            pump = Pump(self.mirror, reader, tap, gone, self._forget)
            with self._lock:  # close() joins every pump started before the link was closing
                if not self.mirror.closing():
                    self._pumps[reader] = pump
                    pump.thread.start()
                    return
            tap.close()
        self._refuse(reader, none="1")  # the reader answers 204 now

    def gone(self, reader: str) -> None:
        """The reader left (its ``detach``): its pump ends."""
        with self._lock:
            pump = self._pumps.get(reader)
        if pump is not None:
            pump.gone.set()

    def close(self) -> list[threading.Thread]:
        """End every pump (the link is closing); returns their threads, to join."""
        with self._lock:
            pumps = list(self._pumps.values())
        for pump in pumps:
            pump.gone.set()
        return [p.thread for p in pumps]

    def _refuse(self, reader: str, **fields: str) -> None:
        try:
            self.mirror.add(mirror_key(reader), "", True, **fields)
        except CoordinationUnavailable as e:  # the reader gives up after its wait
            log.event("mirror_failed", logging.WARNING, reader=reader, error=e.message)

    def _forget(self, pump: Pump) -> None:
        with self._lock:
            self._pumps.pop(pump.reader, None)


class Pump:
    """In the owner: copies one remote reader's Tap to its mirror stream, until the answer ends
    or the reader leaves."""

    def __init__(
        self, mirror: Mirror, reader: str, tap: Tap, gone: threading.Event, forget: Callable[[Pump], None]
    ):
        self.mirror = mirror
        self.reader = reader
        self.tap = tap
        self.forget = forget
        self.gone = gone  # the reader left: the Tap's client_gone, read by the registry's watcher
        # not a daemon: it ends with the answer or the reader (both bounded); close() joins it
        self.thread = threading.Thread(target=self._run, name=f"jarvis-mirror-{reader}")

    def _run(self) -> None:
        key = mirror_key(self.reader)
        frames: list[bytes] = []
        looked = time.monotonic()
        try:
            for ident, ev in self.tap.events():
                if self.gone.is_set():
                    return
                if ident is not None:
                    frames.append(self.tap.framer.frame(ev, ident))
                    ended = isinstance(ev, End)
                    # the last event of the batch the body handed over: one XADD for all of it
                    if ended or int(ident.rpartition(".")[2]) >= self.tap.cursor:
                        self.mirror.add(key, b"".join(frames).decode(), ended)
                        frames = []
                        if ended:
                            return
                        self.gone.wait(BATCH_S)  # what comes meanwhile goes in the next batch
                if time.monotonic() - looked >= RENEW_S:  # a reader that died sends no detach
                    looked = time.monotonic()
                    if not self.mirror.reader_alive(self.reader):
                        log.event("mirror_reader_gone", reader=self.reader)
                        return
        except CoordinationUnavailable as e:  # Redis away: the reader sees nothing more and reconnects
            log.event("mirror_failed", logging.WARNING, reader=self.reader, error=e.message)
        finally:
            self.gone.set()
            self.tap.close()  # a holder's leaving starts the grace again
            self.forget(self)


class Frames:
    """The remote reader's WSGI body. Its ``close()`` tells the owner the reader left even when the
    host never iterated it (a generator not started runs no ``finally``): else the owner would
    pump until the reader's key expired."""

    def __init__(self, mirror: Mirror, reader: str, frames: Iterator[bytes]):
        self.mirror, self.reader, self._frames, self._started = mirror, reader, frames, False

    def __iter__(self) -> Frames:
        return self

    def __next__(self) -> bytes:
        self._started = True
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()  # a started one detaches in its finally
        if not self._started:
            self.mirror.detach(self.reader)


def _frames(
    mirror: Mirror,
    reader: str,
    session: str,
    owner: str,
    entries: list,
    heartbeat_s: float,
    client_gone: Callable[[], bool] | None,
) -> Iterator[bytes]:
    """Yield the mirrored batches, a heartbeat after each empty read; tell the owner when we leave."""
    renewed, lost, cursor = time.monotonic(), 0, "0-0"
    try:
        while True:
            for entry_id, fields in entries:
                cursor = entry_id
                if fields.get("d"):
                    yield fields["d"].encode()
                if fields.get("end"):
                    return
            if mirror.closing() or (client_gone is not None and client_gone()):
                return
            if time.monotonic() - renewed >= RENEW_S:
                renewed = time.monotonic()
                # an owner that died sends no end: give up once it has held no lease for two looks
                lost = 0 if mirror.renew_reader(reader, session, owner) else lost + 1
                if lost >= 2:
                    log.event("mirror_owner_gone", logging.WARNING, reader=reader)
                    return
            entries = mirror.read(reader, cursor, min(heartbeat_s, RENEW_S))
            if not entries:
                yield HEARTBEAT  # a write: how a plain WSGI host notices a gone client
    except CoordinationUnavailable as e:  # the client reconnects with Last-Event-ID
        log.event("mirror_read_failed", logging.WARNING, reader=reader, error=e.message)
    finally:
        mirror.detach(reader)
