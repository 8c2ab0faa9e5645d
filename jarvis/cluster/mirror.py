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


class Pump:
    """In the owner: copies one remote reader's Tap to its mirror stream, until the answer ends
    or the reader leaves."""

    def __init__(self, coord, reader: str, tap, gone: threading.Event, forget: Callable[[Pump], None]):
        self.coord = coord
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
                        self.coord.mirror_add(key, b"".join(frames).decode(), ended)
                        frames = []
                        if ended:
                            return
                        self.gone.wait(BATCH_S)  # what comes meanwhile goes in the next batch
                if time.monotonic() - looked >= RENEW_S:  # a reader that died sends no detach
                    looked = time.monotonic()
                    if not self.coord.reader_alive(self.reader):
                        log.event("mirror_reader_gone", reader=self.reader)
                        return
        except CoordinationUnavailable as e:  # Redis away: the reader sees nothing more and reconnects
            log.event("mirror_failed", logging.WARNING, reader=self.reader, error=e.message)
        finally:
            self.gone.set()
            self.tap.close()  # a holder's leaving starts the grace again
            self.forget(self)


def held_elsewhere(coord, session: str) -> bool:
    """Whether another process holds ``session``'s lease (runs its live answer)."""
    holder = coord.lease_holder(session)
    return holder is not None and not holder.startswith(coord.process_id + " ")


def remote_attach(
    coord, session: str, last_event_id: str | None, heartbeat_s: float, client_gone=None
) -> Iterator[bytes] | None:
    """In a process without the session's live answer: the answer's frames from the process that
    owns it, or None (204) when none is live anywhere. Raises CoordinationUnavailable without Redis."""
    holder = coord.lease_holder(session)
    if holder is None or holder.startswith(coord.process_id + " "):
        return None  # nothing live, or ours and just ended
    reader, owner = secrets.token_hex(8), holder.split(" ")[0]
    coord.mirror_attach(session, owner, reader, last_event_id or "")
    try:
        first = coord.mirror_read(reader, "0-0", ANSWER_WAIT_S)
    except CoordinationUnavailable:
        coord.mirror_detach(reader)
        raise
    if not first or first[0][1].get("none"):
        coord.mirror_detach(reader)
        return None
    if first[0][1].get("error") == TooManyStreams.code:
        coord.mirror_detach(reader)
        raise TooManyStreams(first[0][1].get("message", "this answer has too many readers"))
    return Frames(coord, reader, _frames(coord, reader, session, owner, first, heartbeat_s, client_gone))


class Frames:
    """The remote reader's WSGI body. Its ``close()`` tells the owner the reader left even when the
    host never iterated it (a generator not started runs no ``finally``): else the owner would
    pump until the reader's key expired."""

    def __init__(self, coord, reader: str, frames: Iterator[bytes]):
        self.coord, self.reader, self._frames, self._started = coord, reader, frames, False

    def __iter__(self) -> Frames:
        return self

    def __next__(self) -> bytes:
        self._started = True
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()  # a started one detaches in its finally
        if not self._started:
            self.coord.mirror_detach(self.reader)


def _frames(coord, reader, session, owner, entries, heartbeat_s: float, client_gone) -> Iterator[bytes]:
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
            if coord.closing() or (client_gone is not None and client_gone()):
                return
            if time.monotonic() - renewed >= RENEW_S:
                renewed = time.monotonic()
                # an owner that died sends no end: give up once it has held no lease for two looks
                lost = 0 if coord.reader_renew(reader, session, owner) else lost + 1
                if lost >= 2:
                    log.event("mirror_owner_gone", logging.WARNING, reader=reader)
                    return
            entries = coord.mirror_read(reader, cursor, min(heartbeat_s, RENEW_S))
            if not entries:
                yield HEARTBEAT  # a write: how a plain WSGI host notices a gone client
    except CoordinationUnavailable as e:  # the client reconnects with Last-Event-ID
        log.event("mirror_read_failed", logging.WARNING, reader=reader, error=e.message)
    finally:
        coord.mirror_detach(reader)
