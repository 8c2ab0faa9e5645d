"""The worker: the thread that reads the upstream for one answer, after the session's previous one.

It waits (bounded) for its predecessor, then for the session's lease when
processes share Redis, reads the upstream and hands items over through
``Handoff``; it never touches the response or the store, and after the body's
last take nothing it does reaches the answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from .. import log
from ..cancel import Latch
from ..cluster import Lease
from ..errors import AtCapacity, CoordinationUnavailable, JarvisError, UpstreamError
from ..status import Reason, Status
from ..upstream import Chat, Done, Meta, Thinking, Upstream, forced
from ..upstream.stops import STOP_SEQUENCE, StopMatcher, cut, upstream_chat
from .answer import Answer


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

    def __init__(self, stream: Answer, upstream: Upstream, chat: Chat):
        # the stream, until the thread ends: then the reference goes, so that a finished stream
        # is freed when its last user lets go instead of waiting for the cycle collector
        self.s: Answer | None = stream
        self.trace_id = stream.trace_id
        self.upstream = upstream
        self.chat = chat
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

    def detach(self, lease: Lease | None) -> None:
        """Cleanup gave up waiting for this cancelled worker: the cancel shut its upstream down, so
        it streams no more; free its session now (here, and through ``lease`` in every process)."""
        if lease is not None:
            lease.release()
        self.released.set()

    def _run(self) -> None:
        s = self.s
        lease = s.lease  # the session's lease across processes (cluster/lease.py), or None
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
        stops = StopMatcher(self.chat.options.stop)  # matched here: a backend would hide which
        chunks = self.upstream.stream_chat(upstream_chat(self.chat), s.scope, session=s.session_id)
        ending, chars = Status.COMPLETED, 0
        try:
            for item in cut(forced.strict(self.chat, chunks), stops):
                if s.scope.cancelled:  # checkpoint: between chunks
                    return
                if isinstance(item, Done) and item.reason == "length":
                    ending = Status.LENGTH
                elif isinstance(item, (str, Thinking)):
                    if not chars:
                        s.metrics.first_token.observe(time.monotonic() - s.started_at)
                    chars += len(item) if isinstance(item, str) else len(item.text)
                    if chars > cfg.max_answer_chars:
                        raise UpstreamError(
                            f"the answer is longer than {cfg.max_answer_chars} characters",
                            code="answer_too_long",
                        )
                self.handoff.put(item)
                if isinstance(item, Meta) and STOP_SEQUENCE in item.data:
                    self._stop_sequence()
                    return
        finally:
            getattr(chunks, "close", lambda: None)()
        s.outcome.decide(ending)

    def _stop_sequence(self) -> None:
        """A stop sequence matched: the answer is complete, and its upstream is closed now, as a
        cancel closes it (the cancel's reason says why), instead of read on to its end."""
        s = self.s
        s.outcome.decide(Status.COMPLETED)
        self.cancelled_at = time.monotonic()
        s.scope.cancel(STOP_SEQUENCE)
