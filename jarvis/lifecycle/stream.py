"""One answer's life, split by owner: a worker, a set-once outcome, and the body that owns the end.

- ``Worker`` (worker.py, its own thread) reads the upstream and hands items over.
- ``Outcome`` is decided once: by the first cancel, or by the worker's last word.
- ``Stream`` is what the registry holds (cancel handle, owner, credential) and
  what a route returns: a WSGI body whose events are framed into bytes
  (default: SSE), or read in process through ``events()``.
- ``Body`` (body.py) keeps the answer's events for every reader and owns the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from .. import log
from ..cancel import CancelScope
from ..cluster import Lease, Slot
from ..config import Config
from ..errors import JarvisError
from ..events import Event, Framer, Start
from ..metrics import Metrics
from ..sse import SSEFramer
from ..status import REASON_EVENT, REASON_STATUS, Reason, Status
from ..store import Store
from ..upstream import Chat, Upstream
from .answer import Outcome
from .body import Body, Tap
from .keepers import Keepers
from .worker import Worker


class Stream:
    """A live answer: the registry's cancel handle, and (through its Body) the response."""

    def __init__(
        self,
        *,
        session_id: str | None,
        trace_id: str,
        chat: Chat,
        upstream: Upstream,
        config: Config,
        release: Callable[[Stream], None],
        store: Store | None = None,
        key: str | None = None,
        owner: int | None = None,
        credential: str | None = None,
        client_gone: Callable[[], bool] | None = None,
        metrics: Metrics | None = None,
        framer: Framer | None = None,
        detach_grace_s: float = 0.0,
        keepers: Keepers | None = None,
    ):
        """``key`` names the registry slot (default: the session); a stateless call passes a unique one.
        ``detach_grace_s``: how long the answer goes on once its reader leaves, for another to attach."""
        self.session_id = session_id
        self.key = key if key is not None else session_id
        self.trace_id = trace_id
        self.model = chat.model
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
        self.worker = Worker(self, upstream, chat)
        self.body = Body(self)
        self.tap = self.body.readers.holder  # the prompt's client reads through it
        self.prev: Worker | None = None  # the worker this stream's worker waits for
        self.lease: Lease | None = None  # set by the registry when processes share Redis
        self.slot: Slot | None = None  # and its count among its owner's streams
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
        return self.body.readers.attach(last_event_id, client_gone)

    def client_left(self) -> None:
        """The client holding this answer is gone: end it, or with a grace wait for another."""
        self.body.readers.client_left()

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
