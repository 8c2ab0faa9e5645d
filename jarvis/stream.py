"""One answer's life: a worker that reads the upstream, and the SSE body that owns the end.

The worker thread only reads the upstream and hands text over through a deque;
it never touches the response or the database, so a worker that outlives its
join timeout (detached) can do no harm. The response body (``Stream`` used as
a WSGI iterable) writes every event and owns the end: in ``_finish``, run once,
it cancels, closes, joins, stores the answer, releases the registry entry and
logs ``stream_cleanup``. WSGI servers always call ``close()`` on a body, even
one never iterated, so the end runs whatever the client does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from . import log, sse
from .cancel import CancelScope
from .config import Config
from .errors import AtCapacity, JarvisError, StoreError, UpstreamError
from .history import Store
from .metrics import Metrics
from .upstream import Done, Meta, Options, Queued, Upstream

# cancel reason -> terminal status
REASON_STATUS = {
    "superseded": "superseded",
    "stopped": "stopped",
    "disconnected": "disconnected",
    "shutdown": "stopped",
    "deleted": "stopped",
    "revoked": "stopped",
}
REASON_EVENT = {"stopped": "stream_stopped", "disconnected": "stream_disconnected"}


class Stream:
    """A live answer: cancel flag, worker thread, and the SSE body that relays it."""

    def __init__(
        self,
        *,
        session_id: str,
        trace_id: str,
        model: str,
        messages: list[dict],
        upstream: Upstream,
        store: Store,
        config: Config,
        release: Callable[[Stream], None],
        client_gone: Callable[[], bool] | None = None,
        metrics: Metrics | None = None,
        options: Options | None = None,
    ):
        self.session_id = session_id
        self.owner: int | None = None  # the account, set by the route; the registry counts per owner
        self.credential: str | None = None  # what signed the request, for revocation
        self.trace_id = trace_id
        self.model = model
        self.messages = messages
        self.options = options
        self.upstream = upstream
        self.store = store
        self.config = config
        self.client_gone = client_gone
        self.metrics = metrics or Metrics()
        self._release = release
        self.message_id: int | None = None
        self.user_message_id: int | None = None
        self.scope = CancelScope()
        self.worker = threading.Thread(target=self._work, name=f"jarvis-worker-{trace_id}")
        self.worker_done = threading.Event()
        self.prev: Stream | None = None
        self.started_at = time.monotonic()
        self._items: deque = deque()  # str (text) or Queued, from the worker
        self._wake = threading.Event()
        self._settle_lock = threading.Lock()
        self._outcome: tuple[str, JarvisError | None] | None = None
        self._parts: list[str] = []
        self._chars = 0
        self._seq = 0
        self._sent_start = False
        self._finished = False
        self._last_flush = time.monotonic()
        self._dirty = False  # text not yet checkpointed
        self._cancelled_at: float | None = None
        self.meta: dict = {}  # stored with the answer

    def __repr__(self) -> str:
        return f"<Stream {self.trace_id} session={self.session_id}>"

    def cancel(self, reason: str) -> bool:
        """Cancel with ``reason`` (stopped, superseded, disconnected, shutdown); True the first time."""
        # settle before closing: the worker, woken by the close, must not settle first
        settled = self._settle(REASON_STATUS.get(reason, "stopped"), None)
        if self._cancelled_at is None:
            self._cancelled_at = time.monotonic()  # before the close the worker wakes on
        if not self.scope.cancel(reason):  # closes the upstream, wherever the worker blocks
            return False
        if settled and reason in REASON_EVENT:
            log.event(REASON_EVENT[reason], trace_id=self.trace_id, session=self.session_id)
        self._wake.set()
        return settled

    @property
    def status(self) -> str | None:
        return self._outcome[0] if self._outcome else None

    def start(self, prev: Stream | None) -> None:
        """Start the worker; it first waits for ``prev``, the stream this one supersedes."""
        self.prev = prev
        log.event("stream_start", trace_id=self.trace_id, session=self.session_id, model=self.model)
        self.worker.start()

    def _settle(self, status: str, error: JarvisError | None) -> bool:
        with self._settle_lock:
            if self._outcome is not None:
                return False
            self._outcome = (status, error)
            return True

    # the worker thread
    def _work(self) -> None:
        cfg = self.config
        try:
            if self.prev is not None:
                waited = time.monotonic()
                clean = self.prev.worker_done.wait(cfg.supersede_timeout_s)
                self.metrics.supersede_wait.observe(time.monotonic() - waited)
                log.event(
                    "prev_stream_finished_cleanly" if clean else "prev_stream_timeout_on_cancel",
                    logging.INFO if clean else logging.WARNING,
                    trace_id=self.trace_id,
                    session=self.session_id,
                    prev_trace_id=self.prev.trace_id,
                    waited_ms=round((time.monotonic() - waited) * 1000, 1),
                )
                self.prev = None
            if self.scope.cancelled:  # checkpoint: superseded before it began, never calls upstream
                return
            chunks = self.upstream.stream_chat(
                self.messages, self.model, self.scope, session=self.session_id, options=self.options
            )
            ending = "completed"
            try:
                for item in chunks:
                    if self.scope.cancelled:  # checkpoint: between chunks
                        break
                    if isinstance(item, Meta):
                        self.meta.update(item.data)
                        continue
                    if isinstance(item, Done):
                        if item.reason == "length":
                            ending = "length"  # cut by a token limit: not a finished answer
                        usage = {
                            "prompt_tokens": item.prompt_tokens,
                            "completion_tokens": item.completion_tokens,
                        }
                        self.meta["usage"] = {k: v for k, v in usage.items() if v is not None}
                        continue
                    if not isinstance(item, Queued):
                        if not self._chars:
                            self.metrics.first_token.observe(time.monotonic() - self.started_at)
                        self._chars += len(item)
                        if self._chars > cfg.max_answer_chars:
                            raise UpstreamError(
                                f"the answer is longer than {cfg.max_answer_chars} characters",
                                code="answer_too_long",
                            )
                    self._items.append(item)
                    self._wake.set()
            finally:
                getattr(chunks, "close", lambda: None)()
            self._settle(ending, None)
        except (UpstreamError, AtCapacity) as e:  # AtCapacity: the local model's queue is full
            if self._settle(e.status, e):
                self.metrics.upstream_errors.labels(e.code).inc()
                log.event(
                    "upstream_error",
                    logging.WARNING,
                    trace_id=self.trace_id,
                    session=self.session_id,
                    code=e.code,
                    error=e.message,
                )
        except Exception as e:  # a bug: end the stream as failed, and say so loudly
            log.log.exception("worker crashed trace_id=%s", self.trace_id)
            self._settle("failed", JarvisError(f"internal error: {type(e).__name__}"))
        finally:
            if self._cancelled_at is not None:
                self.metrics.cancel_to_closed.observe(time.monotonic() - self._cancelled_at)
            self.worker_done.set()
            self._wake.set()

    # the response body, iterated by the WSGI server thread
    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> bytes:
        if self._finished:
            raise StopIteration
        if not self._sent_start:
            self._sent_start = True
            return sse.event(
                "start",
                {
                    "trace_id": self.trace_id,
                    "message_id": self.message_id,
                    "user_message_id": self.user_message_id,
                    "model": self.model,
                },
            )
        while True:
            self._wake.clear()
            out = self._drain()
            if out:
                self._checkpoint()
                return out
            if self.scope.cancelled or (self._outcome is not None and self.worker_done.is_set()):
                return self._finish()
            if not self._wake.wait(self._wait_s()):
                self._checkpoint()  # text that arrived before a stall is saved too
                return sse.HEARTBEAT  # a write is how a plain WSGI host notices a gone client

    def close(self) -> None:
        """Called by the WSGI server when the body ends or the client is gone."""
        if not self._finished:
            self.cancel("disconnected")
            self._finish()

    def _drain(self) -> bytes:
        texts = []
        out = b""
        while self._items:
            item = self._items.popleft()
            if isinstance(item, Queued):
                out += sse.event("status", {"state": "queued", "position": item.position})
            else:
                texts.append(item)
        if texts:
            self.metrics.tokens.inc(len(texts))
            text = "".join(texts)
            self._parts.append(text)
            self._dirty = True
            self._seq += 1
            out += sse.event("token", {"text": text}, id=self._seq)
        return out

    def _wait_s(self) -> float:
        if not self._dirty:
            return self.config.heartbeat_s
        due = self._last_flush + self.config.flush_interval_s - time.monotonic()
        return max(0.0, min(self.config.heartbeat_s, due))

    def _checkpoint(self) -> None:
        now = time.monotonic()
        if not self._dirty or now - self._last_flush < self.config.flush_interval_s:
            return
        self._last_flush = now
        self._dirty = False
        try:
            self.store.save_answer(self.message_id, "".join(self._parts), "streaming")
        except StoreError:
            log.log.warning("checkpoint failed trace_id=%s", self.trace_id, exc_info=True)

    def _finish(self) -> bytes:
        """End the stream once: close upstream, join worker, store, release, log."""
        self._finished = True
        try:
            if not self.worker_done.is_set():
                self.cancel("stopped")  # not settled yet and nothing else ended it: close upstream
                if self.worker.ident is not None and not self.worker_done.wait(self.config.cancel_timeout_s):
                    log.event(
                        "worker_detached", logging.WARNING, trace_id=self.trace_id, session=self.session_id
                    )
            out = self._drain()
            status, error = self._outcome
            self.metrics.ended.labels(status).inc()
            end = {"status": status}
            if self.scope.reason and REASON_STATUS.get(self.scope.reason) == status:
                end["reason"] = self.scope.reason
            if error is not None:
                end["error"] = error.to_dict()
            if end.get("reason"):
                self.meta["reason"] = end["reason"]
            try:
                self.store.save_answer(
                    self.message_id,
                    "".join(self._parts),
                    status,
                    error.to_dict() if error else None,
                    self.meta or None,
                )
            except StoreError as e:
                log.event("store_error", logging.ERROR, trace_id=self.trace_id, error=e.message)
            return out + sse.event("end", end)
        finally:
            if self.worker.ident is None:
                self.worker_done.set()  # never started: a later prompt must not wait for it
            self._release(self)
            log.event(
                "stream_cleanup",
                trace_id=self.trace_id,
                session=self.session_id,
                status=self.status,
                chars=self._chars,
                duration_ms=round((time.monotonic() - self.started_at) * 1000, 1),
            )
