"""An answer's event log, its readers, and who drives it; and the end, run once.

``Body`` turns the worker's items into events (``events.py``) and owns the
end: in ``_finish``, run once, it joins the worker, stores the answer,
releases the registry entry and logs ``stream_cleanup``. WSGI servers always
call ``close()`` on a body, even one never iterated, so the end runs whatever
the client does. ``Tap`` is one reader of it; ``Readers`` holds them all and
decides what a reader's leaving means.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from .. import log
from ..errors import TooManyStreams
from ..events import HEARTBEAT, End, Event, Framer, Start
from ..sse import SSEFramer
from ..status import REASON_STATUS, Reason
from .answer import Answer
from .record import Record

MAX_WATCHERS = 8  # readers attached to one answer beside its holder: each holds a server thread
FOLLOW_UP_S = 0.01  # a second heartbeat this soon after the first reveals a gone client (plain WSGI)
EVENT_ID_DIGITS = 9  # an event's number within its answer: far more than any answer has


def event_cursor(last_event_id: str | None, trace_id: str) -> int | None:
    """How many events of answer ``trace_id`` a reader who last had ``last_event_id`` has had
    ("<trace>.<n>", n in ASCII digits); None for anything else: that reader starts from the start."""
    trace, _, n = (last_event_id or "").rpartition(".")
    if trace != trace_id or not (0 < len(n) <= EVENT_ID_DIGITS and n.isascii() and n.isdigit()):
        return None
    return int(n)


class Tap:
    """One reader of an answer: the client that sent the prompt, or one that attached later.

    A WSGI body of its own: the answer's events after ``cursor`` (replayed, then
    live), framed into bytes; ``close()`` tells the body this reader left."""

    def __init__(
        self, body: Body, framer: Framer, cursor: int = 0, client_gone: Callable[[], bool] | None = None
    ):
        self.body = body
        self.framer = framer
        self.cursor = cursor  # how many of the body's events this reader has had
        self.client_gone = client_gone
        self._batches: Iterator[list[tuple[str | None, Event]]] | None = None
        self._events: Iterator[tuple[str | None, Event]] | None = None

    def batches(self) -> Iterator[list[tuple[str | None, Event]]]:
        """The events as they become ready, a batch at a time: (id, event) pairs; heartbeats have no id."""
        if self._batches is None:
            self._batches = self.body.read(self)
        return self._batches

    def events(self) -> Iterator[tuple[str | None, Event]]:
        """(id, event) pairs, one at a time, for a reader in process."""
        if self._events is None:
            self._events = (pair for batch in self.batches() for pair in batch)
        return self._events

    def __iter__(self) -> Tap:
        self.batches()
        return self

    def __next__(self) -> bytes:
        """The events ready now, framed as one write: a write per event would cost a send each."""
        batch = next(self.batches())
        if len(batch) == 1:
            ident, ev = batch[0]
            return self.framer.frame(ev, ident)
        return b"".join(self.framer.frame(ev, ident) for ident, ev in batch)

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
        self.body.readers.leave(self)


class Readers:
    """An answer's readers: the one that holds it and those that watch it, and who drives it while
    nobody reads. Every field is written here alone, under the body's condition.

    The reader that holds the answer (the prompt's client, or one that took over) decides what its
    leaving means: the end, at once, or with ``JARVIS_DETACH_GRACE`` a keeper thread that drives
    the answer until someone attaches or the grace runs out.
    """

    def __init__(self, body: Body, stream: Answer):
        self.body = body
        self.grace = stream.detach_grace_s
        self.holder: Tap | None = Tap(body, stream.framer, client_gone=stream.client_gone)
        self._watchers: list[Tap] = []  # readers whose leaving changes nothing
        self._detached_at: float | None = None
        self._keeping = False  # a keeper thread drives the answer while nobody reads it

    def attach(self, last_event_id: str | None, client_gone: Callable[[], bool] | None) -> Tap | None:
        """A new reader, from after ``last_event_id`` (an id this answer sent) or from the start;
        it holds the answer if nobody does. None once the answer has ended."""
        body = self.body
        seen = event_cursor(last_event_id, body.trace_id)
        with body.logged:
            if body.ended:
                return None
            if self.holder is not None and len(self._watchers) >= MAX_WATCHERS:
                raise TooManyStreams(f"this answer already has {MAX_WATCHERS} readers; close one")
            cursor = min(seen, len(body.events)) if seen is not None else 0
            tap = Tap(body, SSEFramer(), cursor, client_gone)
            if self.holder is None:
                self._hold(tap)
                took_over = True
            else:
                self._watchers.append(tap)
                took_over = False
            s = body.s
        log.event("stream_attached", trace_id=body.trace_id, session=s.session_id, took_over=took_over)
        s.worker.handoff.wake.set()  # a keeper waiting for the worker looks again, and sees the holder
        return tap

    def leave(self, tap: Tap) -> None:
        """``tap`` stopped reading: a watcher just goes; the holder's leaving ends the answer,
        or, with a grace, hands it to another reader or to a keeper."""
        body, grace = self.body, self.grace
        with body.logged:
            body.logged.notify_all()  # a reader waiting on this one's drive takes it over
            if tap in self._watchers:
                self._watchers.remove(tap)
                return
            if tap is not self.holder or body.ended:
                return
            self.holder = None
            if grace > 0 and self._watchers:
                self._hold(self._watchers.pop(0))
                return
            s = body.s
            s.client_gone = None
            start_keeper = False
            if grace > 0:
                self._detached_at = time.monotonic()
                # one keeper at a time; a running one sees the new grace
                start_keeper, self._keeping = not self._keeping, True
        if grace > 0:
            log.event("stream_detached", trace_id=body.trace_id, session=s.session_id, grace_s=grace)
            if not start_keeper or s.keepers.start(f"jarvis-keeper-{body.trace_id}", self._keep):
                return
            with body.logged:
                self._keeping = False  # shutting down: no keeper, the answer ends now
        s.cancel(Reason.DISCONNECTED)  # nobody reads the end: the client is gone
        body.end_here()

    def client_left(self) -> None:
        """The holder's client is gone (seen by the registry's watcher before any write fails)."""
        with self.body.logged:
            holder, s = self.holder, self.body.s
        if holder is None or s is None:
            return
        if self.grace > 0:
            self.leave(holder)
        else:
            s.cancel(Reason.DISCONNECTED)  # its reader, woken, ends the answer

    def drop(self) -> None:
        """Nobody will read the answer (not admitted, or not started)."""
        with self.body.logged:
            self.holder = None

    def _hold(self, tap: Tap) -> None:
        self.holder, self._detached_at = tap, None
        self.body.s.client_gone = tap.client_gone  # the registry's watcher now watches this client

    def _keep(self) -> None:
        """Drive the answer while nobody reads it, until someone attaches or the grace runs out."""
        body, grace = self.body, self.grace
        while True:
            with body.logged:
                if body.ended or self.holder is not None:
                    self._keeping = False
                    return
                left = self._detached_at + grace - time.monotonic()
                s = body.s
            if left <= 0:
                log.event("detach_grace_expired", trace_id=body.trace_id, session=s.session_id)
                s.cancel(Reason.DISCONNECTED)
                body.end_here()
                return
            body.drive(left, min(left, body.config.heartbeat_s), until=lambda: self.holder is not None)


class Body:
    """Turns the worker's items into the answer's events, kept in order for every reader, and owns
    the end: checkpoints, store, release, log.

    Whoever reads drives: a reader with nothing new takes the drive lock (never held across a
    yield) and moves the worker's items into the event log. ``readers`` (``Readers``) says who reads.
    """

    def __init__(self, stream: Answer):
        self.s: Answer | None = stream  # dropped at the end, as the worker does
        self.trace_id = stream.trace_id
        self.config = stream.config
        self.record = Record(stream)  # the text and meta stored with the answer; written here alone
        self.events: list[Event] = []  # every event but heartbeats, in order: event n has id "<trace>.<n>"
        self.logged = threading.Condition()  # guards the events and the readers; notified as they change
        self._drive = threading.Lock()  # held while moving items into the log; never across a yield
        self.ended = False
        self.readers = Readers(self, stream)

    def read(self, tap: Tap) -> Iterator[list[tuple[str | None, Event]]]:
        """The events ``tap`` has not had, then the live ones as they come, a batch at a time, up to
        the end; heartbeats while quiet."""
        follow_ups = 0
        while True:
            with self.logged:
                first, batch = tap.cursor, self.events[tap.cursor :]
                tap.cursor = len(self.events)
            if batch:
                follow_ups = 0
                yield [(f"{self.trace_id}.{n}", ev) for n, ev in enumerate(batch, first + 1)]
                if isinstance(batch[-1], End):
                    return
                continue
            if not self._advance(FOLLOW_UP_S if follow_ups else self.record.wait_s()):
                # a second write right after the first is refused once the first met a closed socket
                follow_ups = (follow_ups + 1) % 3
                yield [(None, HEARTBEAT)]

    def begin(self, start: Start) -> None:
        self._publish([start])

    def abort(self) -> None:
        """End a stream nobody will read (not admitted, or not started)."""
        self.readers.drop()
        self.end_here()

    def drive(self, timeout: float, wait: float, until: Callable[[], bool]) -> None:
        """Drive for up to ``wait`` (or until ``until()``) once the drive lock is free, waiting up
        to ``timeout`` for it: a keeper's turn."""
        if self._drive.acquire(timeout=timeout):
            try:
                if not self.ended:
                    self._pump(wait, until=until)
            finally:
                self._let_go()

    def _advance(self, wait: float) -> bool:
        """Wait up to ``wait`` for the log to grow, driving if nobody else is; True if it grew."""
        with self.logged:
            seen = len(self.events)
            # tried under the condition's lock: a driver lets go under it too, so its notify is never missed
            if not self._drive.acquire(blocking=False):
                self.logged.wait(wait)  # woken by new events, or by the driver letting go
                return len(self.events) > seen
        try:
            if not self.ended:
                self._pump(wait)
        finally:
            self._let_go()
        with self.logged:
            return len(self.events) > seen

    def _let_go(self) -> None:
        with self.logged:
            self._drive.release()
            self.logged.notify_all()

    def _pump(self, wait: float, until: Callable[[], bool] | None = None) -> None:
        """Move the worker's items into the log, waiting up to ``wait`` for some; end the answer
        once the worker is done or the stream is cancelled. Runs under the drive lock."""
        s = self.s
        handoff, deadline = s.worker.handoff, time.monotonic() + wait
        while True:
            handoff.wake.clear()
            out = self.record.convert(self.s, handoff.take())
            if out:
                self.record.checkpoint(self.s)
                self._publish(out)
                return
            if s.scope.cancelled or (s.outcome.status is not None and s.worker.done.is_set()):
                self._publish(self._finish())
                return
            left = deadline - time.monotonic()
            if left <= 0 or (until is not None and until()):
                self.record.checkpoint(self.s)  # text that arrived before a stall is saved too
                return
            handoff.wake.wait(left)

    def _publish(self, events: list[Event]) -> None:
        with self.logged:
            self.events.extend(events)
            self.logged.notify_all()

    def end_here(self) -> None:
        """Run the end now if no reader has: the stream is cancelled, so a driver ends it at once."""
        if not self._drive.acquire(timeout=self.config.cancel_timeout_s + self.config.heartbeat_s):
            log.event("stream_end_waited", logging.WARNING, trace_id=self.trace_id)
            return
        try:
            if not self.ended:
                self._publish(self._finish())
        finally:
            self._let_go()

    def _finish(self) -> list[Event]:
        """End the stream once: join the worker, take its last items, store, release, log."""
        with self.logged:
            self.ended = True
        s = self.s
        try:
            worker, detached = s.worker, False
            if not worker.thread.ident:
                worker.abandon(s.prev)  # never started: release the chain
            else:
                detached = not worker.done.wait(s.config.cancel_timeout_s)
            # the last take, before anything can free a detached worker: what it puts later is never read
            out = self.record.convert(self.s, worker.handoff.take())
            if detached:
                log.event("worker_detached", logging.WARNING, trace_id=s.trace_id, session=s.session_id)
                worker.detach(s.lease)  # not streaming (its upstream is shut): the session goes on
            o = s.outcome
            s.metrics.ended.labels(o.status).inc()
            reason = o.reason if o.reason and REASON_STATUS.get(o.reason) == o.status else None
            meta = self.record.meta
            if reason:
                meta["reason"] = str(reason)
            error = o.error.to_dict() if o.error else None
            meta["timing"] = self.record.timing(s)
            self.record.store_end(s, o.status, error)
            return [*out, End(o.status, reason, error, dict(meta))]
        finally:
            s.release(s)
            took_ms = round((time.monotonic() - s.started_at) * 1000, 1)
            log.event(
                "stream_cleanup", trace_id=s.trace_id, session=s.session_id, status=s.status,
                chars=self.record.chars, duration_ms=took_ms,
            )  # fmt: skip
            self.s = None
