"""One answer's life, split by owner: a worker, a set-once outcome, and the body that owns the end.

- ``Worker`` (its own thread) waits for the session's previous worker, reads
  the upstream and hands items over through ``Handoff``; it never touches the
  response or the store, and after the body's last take nothing it does
  reaches the answer.
- ``Outcome`` is decided once: by the first cancel, or by the worker's last word.
- ``Stream`` is what the registry holds (cancel handle, owner, credential) and
  what a route returns: a WSGI body whose events are framed into bytes
  (default: SSE), or read in process through ``events()``.
- ``Body`` turns the worker's items into events (``events.py``) and owns the
  end: in ``_finish``, run once, it joins the worker, stores the answer,
  releases the registry entry and logs ``stream_cleanup``. WSGI servers always
  call ``close()`` on a body, even one never iterated, so the end runs
  whatever the client does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from enum import Enum

from . import log
from .cancel import CancelScope, Latch
from .config import Config
from .errors import (
    AtCapacity,
    CoordinationUnavailable,
    JarvisError,
    TooManyStreams,
    UpstreamError,
)
from .events import HEARTBEAT, End, Event, Framer, Start, Text
from .events import Progress as ProgressEvent
from .history import Store
from .keepers import Keepers
from .metrics import Metrics
from .sse import SSEFramer
from .upstream import Done, Meta, Options, Progress, Upstream


class Reason(str, Enum):
    """Why a stream was cancelled."""

    STOPPED = "stopped"
    SUPERSEDED = "superseded"
    DISCONNECTED = "disconnected"
    SHUTDOWN = "shutdown"
    DELETED = "deleted"
    REVOKED = "revoked"  # the credential that started it was revoked

    __str__ = str.__str__


class Status(str, Enum):
    """How an answer ended: the status it is stored with and the end event carries."""

    COMPLETED = "completed"
    LENGTH = "length"  # cut by a token limit: not a finished answer
    STOPPED = "stopped"
    SUPERSEDED = "superseded"
    DISCONNECTED = "disconnected"
    TIMEOUT = "timeout"
    FAILED = "failed"

    __str__ = str.__str__


# cancel reason -> terminal status (every Reason is listed: cancel takes no other)
REASON_STATUS = {
    Reason.SUPERSEDED: Status.SUPERSEDED,
    Reason.STOPPED: Status.STOPPED,
    Reason.DISCONNECTED: Status.DISCONNECTED,
    Reason.SHUTDOWN: Status.STOPPED,
    Reason.DELETED: Status.STOPPED,
    Reason.REVOKED: Status.STOPPED,
}
REASON_EVENT = {Reason.STOPPED: "stream_stopped", Reason.DISCONNECTED: "stream_disconnected"}
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


END_WRITE_WAIT_S = 0.25  # the longest an answer's end waits for its final write to land


class Outcome:
    """The stream's terminal status, reason and error: decided once, by whoever comes first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status: Status | None = None
        self.reason: str | None = None
        self.error: JarvisError | None = None

    def decide(self, status: Status, reason: str | None = None, error: JarvisError | None = None) -> bool:
        """Record the end; True only for the first call."""
        with self._lock:
            if self.status is not None:
                return False
            self.status, self.reason, self.error = Status(status), reason, error
            return True


class Handoff:
    """Items from the worker to the body, which takes them for the last time as the stream ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque = deque()
        self.wake = threading.Event()

    def put(self, item) -> None:
        with self._lock:
            self._items.append(item)
        # set only if clear: the body clears it before it takes, so a set flag means a take is
        # still to come, and setting it again (a lock and a notify per token) would only cost time
        if not self.wake.is_set():
            self.wake.set()

    def take(self) -> list:
        with self._lock:
            items, self._items = list(self._items), deque()
        return items


class Worker:
    """Reads the upstream in its own thread, after the session's previous worker is done."""

    def __init__(self, stream: Stream, upstream: Upstream, messages: list[dict], options: Options | None):
        # the stream, until the thread ends: then the reference goes, so that a finished stream
        # is freed when its last user lets go instead of waiting for the cycle collector
        self.s: Stream | None = stream
        self.trace_id = stream.trace_id
        self.upstream = upstream
        self.messages = messages
        self.options = options
        self.handoff = Handoff()
        self.done = threading.Event()  # the thread has ended
        # the upstream is free for the session's next worker: set when this one ends, or, if it
        # never called the upstream, when the one before it is free
        self.released = Latch()
        self.cancelled_at: float | None = None
        self._prev: Worker | None = None
        # daemon: cleanup joins it with a timeout, and one stuck in a blocking call must not keep
        # the process alive once shutdown has given up on it
        self.thread = threading.Thread(target=self._run, name=f"jarvis-worker-{stream.trace_id}", daemon=True)

    def start(self, prev: Worker | None) -> None:
        self._prev = prev
        self.thread.start()

    def abandon(self, prev: Worker | None) -> None:
        """The thread never ran: pass the predecessor's release on to the successor."""
        self._chain(prev)
        self.s = None
        self.done.set()

    def _chain(self, prev: Worker | None) -> None:
        if prev is None:
            self.released.set()
        else:
            prev.released.then(self.released.set)

    def detach(self, lease) -> None:
        """Cleanup gave up waiting for this cancelled worker: the cancel shut its upstream down, so
        it streams no more; free its session now (here, and through ``lease`` in every process)."""
        if lease is not None:
            lease.release()
        self.released.set()

    def _run(self) -> None:
        s = self.s
        lease = s.lease  # the session's lease across processes (coord.py), or None
        called = False
        # one deadline for both waits, the local predecessor's and the lease's
        deadline = time.monotonic() + s.config.supersede_timeout_s
        try:
            if self._prev is not None:
                self._wait_for(self._prev, deadline)
            if s.scope.cancelled:  # checkpoint: superseded before it began, never calls upstream
                return
            if lease is not None and not lease.acquire(s.scope, deadline):
                s.cancel(Reason.SUPERSEDED)  # a newer prompt holds the lease, or this one was cancelled
                return
            called = True
            self._read()
        except (UpstreamError, AtCapacity, CoordinationUnavailable) as e:  # AtCapacity: a full local queue
            if s.outcome.decide(e.status, None, e):
                s.metrics.upstream_errors.labels(e.code).inc()
                log.event(
                    "upstream_error", logging.WARNING, trace_id=s.trace_id, session=s.session_id,
                    code=e.code, error=e.message,
                )  # fmt: skip
        except Exception as e:  # a bug: end the stream as failed, and say so loudly
            log.log.exception("worker crashed trace_id=%s", s.trace_id)
            s.outcome.decide(Status.FAILED, None, JarvisError(f"internal error: {type(e).__name__}"))
        finally:
            if self.cancelled_at is not None:
                s.metrics.cancel_to_closed.observe(time.monotonic() - self.cancelled_at)
            if lease is not None:
                lease.release()  # before the local successor looks: it finds the lease free
            if called:
                self.released.set()
            else:
                self._chain(self._prev)
            self._prev = None
            self.s = None
            self.done.set()
            self.handoff.wake.set()

    def _wait_for(self, prev: Worker, deadline: float) -> None:
        s = self.s
        waited = time.monotonic()
        # wake on either: the predecessor's upstream is free, or this stream is cancelled
        gate = threading.Event()
        undo = [prev.released.then(gate.set), s.scope.on_cancel(gate.set)]
        gate.wait(max(0.0, deadline - waited))
        for u in undo:
            u()
        s.metrics.supersede_wait.observe(time.monotonic() - waited)
        if s.scope.cancelled and not prev.released.is_set():
            return  # cancelled while waiting: the successor takes over the wait
        clean = prev.released.is_set()
        log.event(
            "prev_stream_finished_cleanly" if clean else "prev_stream_timeout_on_cancel",
            logging.INFO if clean else logging.WARNING,
            trace_id=s.trace_id, session=s.session_id, prev_trace_id=prev.trace_id,
            waited_ms=round((time.monotonic() - waited) * 1000, 1),
        )  # fmt: skip

    def _read(self) -> None:
        s, cfg = self.s, self.s.config
        chunks = self.upstream.stream_chat(
            self.messages, s.model, s.scope, session=s.session_id, options=self.options
        )
        ending, chars = Status.COMPLETED, 0
        try:
            for item in chunks:
                if s.scope.cancelled:  # checkpoint: between chunks
                    return
                if isinstance(item, Done) and item.reason == "length":
                    ending = Status.LENGTH
                elif isinstance(item, str):
                    if not chars:
                        s.metrics.first_token.observe(time.monotonic() - s.started_at)
                    chars += len(item)
                    if chars > cfg.max_answer_chars:
                        raise UpstreamError(
                            f"the answer is longer than {cfg.max_answer_chars} characters",
                            code="answer_too_long",
                        )
                self.handoff.put(item)
        finally:
            getattr(chunks, "close", lambda: None)()
        s.outcome.decide(ending)


class Stream:
    """A live answer: the registry's cancel handle, and (through its Body) the response."""

    def __init__(
        self,
        *,
        session_id: str | None,
        trace_id: str,
        model: str,
        messages: list[dict],
        upstream: Upstream,
        config: Config,
        release: Callable[[Stream], None],
        store: Store | None = None,
        key: str | None = None,
        owner: int | None = None,
        credential: str | None = None,
        client_gone: Callable[[], bool] | None = None,
        metrics: Metrics | None = None,
        options: Options | None = None,
        framer: Framer | None = None,
        detach_grace_s: float = 0.0,
        keepers: Keepers | None = None,
    ):
        """``key`` names the registry slot (default: the session); a stateless call passes a unique one.
        ``detach_grace_s``: how long the answer goes on once its reader leaves, for another to attach."""
        self.session_id = session_id
        self.key = key if key is not None else session_id
        self.trace_id = trace_id
        self.model = model
        self.owner = owner  # user id, or None
        self.credential = credential  # names the credential that started it, or None
        self.proof: str | None = None  # that credential as a Stop can show it again (auth.proof)
        self.store = store
        self.config = config
        self.client_gone = client_gone
        self.metrics = metrics or Metrics()
        self.framer = framer or SSEFramer()
        self.release = release
        self.detach_grace_s = detach_grace_s
        self.keepers = keepers if keepers is not None else Keepers()  # the registry's, to join at shutdown
        self.message_id: int | None = None
        self.user_message_id: int | None = None
        self.scope = CancelScope()
        self.outcome = Outcome()
        self.worker = Worker(self, upstream, messages, options)
        self.body = Body(self)
        self.tap = self.body.holder  # the prompt's client reads through it
        self.prev: Worker | None = None  # the worker this stream's worker waits for
        self.lease = None  # set by the registry when processes share Redis (coord.Lease)
        self.slot = None  # and its count among its owner's streams (coord.Slot)
        self.started_at = time.monotonic()

    def __repr__(self) -> str:
        return f"<Stream {self.trace_id} key={self.key}>"

    @property
    def status(self) -> Status | None:
        return self.outcome.status

    def cancel(self, reason: Reason) -> bool:
        """Cancel with ``reason``; True the first time it decides the end. TypeError for anything
        but a Reason: a misspelt string must not end an answer as stopped."""
        if not isinstance(reason, Reason):
            raise TypeError(f"a stream is cancelled with a Reason, not {reason!r}")
        # decide before closing: the worker, woken by the close, must not decide first
        decided = self.outcome.decide(REASON_STATUS[reason], reason)
        if self.worker.cancelled_at is None:
            self.worker.cancelled_at = time.monotonic()  # before the close the worker wakes on
        if not self.scope.cancel(reason):  # closes the upstream, wherever the worker blocks
            return False
        if decided and reason in REASON_EVENT:
            log.event(REASON_EVENT[reason], trace_id=self.trace_id, session=self.session_id)
        self.worker.handoff.wake.set()
        return decided

    def fail(self, error: JarvisError) -> None:
        """End a stream that could not be handed over (not admitted, not started): store, release."""
        self.outcome.decide(Status(error.status), None, error)
        self.body.abort()

    def start(self, prev: Stream | None) -> None:
        """Start the worker; it first waits for ``prev``, the stream this one supersedes."""
        log.event("stream_start", trace_id=self.trace_id, session=self.session_id, model=self.model)
        self.prev = prev.worker if prev is not None else None
        self.body.begin(Start(self.trace_id, self.model, self.message_id, self.user_message_id))
        self.worker.start(self.prev)

    def attach(self, last_event_id: str | None, client_gone: Callable[[], bool] | None = None) -> Tap | None:
        """Another reader of this answer (Jarvis's SSE); None once it has ended."""
        return self.body.attach(last_event_id, client_gone)

    def client_left(self) -> None:
        """The client holding this answer is gone: end it, or with a grace wait for another."""
        self.body.client_left()

    def events(self) -> Iterator[Event]:
        """The events of this answer, for one reader in process; call ``close()`` when done."""
        return (ev for _, ev in self.tap.events())

    # the WSGI body of the prompt's response: its reader's events framed into bytes
    def __iter__(self) -> Stream:
        self.tap.events()
        return self

    def __next__(self) -> bytes:
        return next(self.tap)

    def close(self) -> None:
        """The prompt's client is done reading; its leaving ends the answer (at once, or once the
        grace runs out). Idempotent. WSGI servers call it on every body, even one never iterated."""
        self.tap.close()


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
        self._events: Iterator[tuple[str | None, Event]] | None = None

    def events(self) -> Iterator[tuple[str | None, Event]]:
        """(id, event) pairs; heartbeats have no id."""
        if self._events is None:
            self._events = self.body.read(self)
        return self._events

    def __iter__(self) -> Tap:
        self.events()
        return self

    def __next__(self) -> bytes:
        ident, ev = next(self.events())
        return self.framer.frame(ev, ident)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
        self.body.leave(self)


class Body:
    """Turns the worker's items into the answer's events, kept in order for every reader,
    and owns the end: checkpoints, store, release, log.

    Whoever reads drives: a reader with nothing new takes the drive lock (never held
    across a yield) and moves the worker's items into the event log. The reader that
    holds the answer (the prompt's client, or one that took over) decides what its
    leaving means: the end, at once, or with ``JARVIS_DETACH_GRACE`` a keeper thread
    that drives the answer until someone attaches or the grace runs out.
    """

    def __init__(self, stream: Stream):
        self.s: Stream | None = stream  # dropped at the end, as the worker does
        self.trace_id = stream.trace_id
        self.config = stream.config
        self.grace = stream.detach_grace_s
        self.meta: dict = {}  # stored with the answer; written here alone
        self._parts: list[str] = []
        self._log: list[Event] = []  # every event but heartbeats, in order: event n has id "<trace>.<n>"
        self._logged = threading.Condition()  # guards the log and the readers; notified as they change
        self._drive = threading.Lock()  # held while moving items into the log; never across a yield
        self._ended = False
        self.holder: Tap | None = Tap(self, stream.framer, client_gone=stream.client_gone)
        self._watchers: list[Tap] = []  # readers whose leaving changes nothing
        self._detached_at: float | None = None
        self._keeping = False  # a keeper thread drives the answer while nobody reads it
        self._last_flush = time.monotonic()
        self._dirty = False  # text not yet checkpointed
        self._first_text_at: float | None = None

    # readers

    def read(self, tap: Tap) -> Iterator[tuple[str | None, Event]]:
        """The events ``tap`` has not had, then the live ones, up to the end; heartbeats while quiet."""
        follow_ups = 0
        while True:
            with self._logged:
                first, batch = tap.cursor, self._log[tap.cursor :]
                tap.cursor = len(self._log)
            if batch:
                follow_ups = 0
                for n, ev in enumerate(batch, first + 1):
                    yield f"{self.trace_id}.{n}", ev
                if isinstance(batch[-1], End):
                    return
                continue
            if not self._advance(FOLLOW_UP_S if follow_ups else self._wait_s()):
                # a second write right after the first is refused once the first met a closed socket
                follow_ups = (follow_ups + 1) % 3
                yield None, HEARTBEAT

    def attach(self, last_event_id: str | None, client_gone: Callable[[], bool] | None) -> Tap | None:
        """A new reader, from after ``last_event_id`` (an id this answer sent) or from the start;
        it holds the answer if nobody does. None once the answer has ended."""
        seen = event_cursor(last_event_id, self.trace_id)
        with self._logged:
            if self._ended:
                return None
            if self.holder is not None and len(self._watchers) >= MAX_WATCHERS:
                raise TooManyStreams(f"this answer already has {MAX_WATCHERS} readers; close one")
            cursor = min(seen, len(self._log)) if seen is not None else 0
            tap = Tap(self, SSEFramer(), cursor, client_gone)
            if self.holder is None:
                self._hold(tap)
                took_over = True
            else:
                self._watchers.append(tap)
                took_over = False
            s = self.s
        log.event("stream_attached", trace_id=self.trace_id, session=s.session_id, took_over=took_over)
        s.worker.handoff.wake.set()  # a keeper waiting for the worker looks again, and sees the holder
        return tap

    def leave(self, tap: Tap) -> None:
        """``tap`` stopped reading: a watcher just goes; the holder's leaving ends the answer,
        or, with a grace, hands it to another reader or to a keeper."""
        grace = self.grace
        with self._logged:
            self._logged.notify_all()  # a reader waiting on this one's drive takes it over
            if tap in self._watchers:
                self._watchers.remove(tap)
                return
            if tap is not self.holder or self._ended:
                return
            self.holder = None
            if grace > 0 and self._watchers:
                self._hold(self._watchers.pop(0))
                return
            s = self.s
            s.client_gone = None
            start_keeper = False
            if grace > 0:
                self._detached_at = time.monotonic()
                # one keeper at a time; a running one sees the new grace
                start_keeper, self._keeping = not self._keeping, True
        if grace > 0:
            log.event("stream_detached", trace_id=self.trace_id, session=s.session_id, grace_s=grace)
            if not start_keeper or s.keepers.start(f"jarvis-keeper-{self.trace_id}", self._keep):
                return
            with self._logged:
                self._keeping = False  # shutting down: no keeper, the answer ends now
        s.cancel(Reason.DISCONNECTED)  # nobody reads the end: the client is gone
        self._end_here()

    def client_left(self) -> None:
        """The holder's client is gone (seen by the registry's watcher before any write fails)."""
        with self._logged:
            holder, s = self.holder, self.s
        if holder is None or s is None:
            return
        if self.grace > 0:
            self.leave(holder)
        else:
            s.cancel(Reason.DISCONNECTED)  # its reader, woken, ends the answer

    def begin(self, start: Start) -> None:
        self._publish([start])

    def abort(self) -> None:
        """End a stream nobody will read (not admitted, or not started)."""
        with self._logged:
            self.holder = None
        self._end_here()

    def _hold(self, tap: Tap) -> None:
        self.holder, self._detached_at = tap, None
        self.s.client_gone = tap.client_gone  # the registry's watcher now watches this client

    def _keep(self) -> None:
        """Drive the answer while nobody reads it, until someone attaches or the grace runs out."""
        grace = self.grace
        while True:
            with self._logged:
                if self._ended or self.holder is not None:
                    self._keeping = False
                    return
                left = self._detached_at + grace - time.monotonic()
                s = self.s
            if left <= 0:
                log.event("detach_grace_expired", trace_id=self.trace_id, session=s.session_id)
                s.cancel(Reason.DISCONNECTED)
                self._end_here()
                return
            if self._drive.acquire(timeout=left):
                try:
                    if not self._ended:
                        self._pump(min(left, self.config.heartbeat_s), until=lambda: self.holder is not None)
                finally:
                    self._let_go()

    # driving

    def _advance(self, wait: float) -> bool:
        """Wait up to ``wait`` for the log to grow, driving if nobody else is; True if it grew."""
        with self._logged:
            seen = len(self._log)
            # tried under the condition's lock: a driver lets go under it too, so its notify is never missed
            if not self._drive.acquire(blocking=False):
                self._logged.wait(wait)  # woken by new events, or by the driver letting go
                return len(self._log) > seen
        try:
            if not self._ended:
                self._pump(wait)
        finally:
            self._let_go()
        with self._logged:
            return len(self._log) > seen

    def _let_go(self) -> None:
        with self._logged:
            self._drive.release()
            self._logged.notify_all()

    def _pump(self, wait: float, until: Callable[[], bool] | None = None) -> None:
        """Move the worker's items into the log, waiting up to ``wait`` for some; end the answer
        once the worker is done or the stream is cancelled. Runs under the drive lock."""
        s = self.s
        handoff, deadline = s.worker.handoff, time.monotonic() + wait
        while True:
            handoff.wake.clear()
            out = self._convert(handoff.take())
            if out:
                self._checkpoint()
                self._publish(out)
                return
            if s.scope.cancelled or (s.outcome.status is not None and s.worker.done.is_set()):
                self._publish(self._finish())
                return
            left = deadline - time.monotonic()
            if left <= 0 or (until is not None and until()):
                self._checkpoint()  # text that arrived before a stall is saved too
                return
            handoff.wake.wait(left)

    def _publish(self, events: list[Event]) -> None:
        with self._logged:
            self._log.extend(events)
            self._logged.notify_all()

    def _end_here(self) -> None:
        """Run the end now if no reader has: the stream is cancelled, so a driver ends it at once."""
        if not self._drive.acquire(timeout=self.config.cancel_timeout_s + self.config.heartbeat_s):
            log.event("stream_end_waited", logging.WARNING, trace_id=self.trace_id)
            return
        try:
            if not self._ended:
                self._publish(self._finish())
        finally:
            self._let_go()

    def _convert(self, items: list) -> list[Event]:
        out, texts = [], []
        for item in items:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, Progress):
                out.append(ProgressEvent(item.state, item.position, item.tokens))
            elif isinstance(item, Meta):
                self.meta.update(item.data)
            elif isinstance(item, Done):
                usage = {"prompt_tokens": item.prompt_tokens, "completion_tokens": item.completion_tokens}
                self.meta["usage"] = {k: v for k, v in usage.items() if v is not None}
        if texts:
            if self._first_text_at is None:
                self._first_text_at = time.monotonic()
            self.s.metrics.tokens.inc(len(texts))
            text = "".join(texts)
            self._parts.append(text)
            self._dirty = True
            out.append(Text(text))
        return out

    def _wait_s(self) -> float:
        cfg = self.config
        if not self._dirty:
            return cfg.heartbeat_s
        due = self._last_flush + cfg.flush_interval_s - time.monotonic()
        return max(0.0, min(cfg.heartbeat_s, due))

    def _checkpoint(self) -> None:
        s, now = self.s, time.monotonic()
        if not self._dirty or now - self._last_flush < s.config.flush_interval_s or s.store is None:
            return
        self._last_flush = now
        self._dirty = False
        # queued, never waited for: a hung database must not hold the answer (the next one carries its text)
        s.store.writer.save(s.message_id, "".join(self._parts), "streaming", trace_id=s.trace_id)

    def _finish(self) -> list[Event]:
        """End the stream once: join the worker, take its last items, store, release, log."""
        with self._logged:
            self._ended = True
        s = self.s
        try:
            worker, detached = s.worker, False
            if not worker.thread.ident:
                worker.abandon(s.prev)  # never started: release the chain
            else:
                detached = not worker.done.wait(s.config.cancel_timeout_s)
            # the last take, before anything can free a detached worker: what it puts later is never read
            out = self._convert(worker.handoff.take())
            if detached:
                log.event("worker_detached", logging.WARNING, trace_id=s.trace_id, session=s.session_id)
                worker.detach(s.lease)  # not streaming (its upstream is shut): the session goes on
            o = s.outcome
            s.metrics.ended.labels(o.status).inc()
            reason = o.reason if o.reason and REASON_STATUS.get(o.reason) == o.status else None
            if reason:
                self.meta["reason"] = str(reason)
            error = o.error.to_dict() if o.error else None
            self.meta["timing"] = self._timing()
            self._store_end(o.status, error)
            return [*out, End(o.status, reason, error, dict(self.meta))]
        finally:
            s.release(s)
            took_ms = round((time.monotonic() - s.started_at) * 1000, 1)
            log.event(
                "stream_cleanup", trace_id=s.trace_id, session=s.session_id, status=s.status,
                chars=sum(map(len, self._parts)), duration_ms=took_ms,
            )  # fmt: skip
            self.s = None

    def _timing(self) -> dict:
        """Milliseconds from the prompt to the first text and to the end: with the usage, the speed."""
        started = self.s.started_at
        first = self._first_text_at
        timing = {"duration_ms": round((time.monotonic() - started) * 1000, 1)}
        if first is not None:
            timing["first_token_ms"] = round((first - started) * 1000, 1)
        return timing

    def _store_end(self, status: Status, error: dict | None) -> None:
        s = self.s
        if s.store is None or s.message_id is None:
            return
        # written and retried in the background: the end goes out and the slot is freed whatever the
        # database does; a database that answers has it stored before the end event
        tried = s.store.writer.save(
            s.message_id, "".join(self._parts), status, error, self.meta or None, s.trace_id
        )
        tried.wait(END_WRITE_WAIT_S)
