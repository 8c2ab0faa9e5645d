"""What the parts of an answer know of it: the ``Answer`` they are given, and its ``Outcome``.

The body, its record and the worker each hold the stream they serve, but import only
this shape of it, so that ``stream.py``, which builds them, is the only module that
names them all: the wing has no import circle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from ..cancel import CancelScope
from ..cluster import Lease
from ..config import Config
from ..errors import JarvisError
from ..events import Framer
from ..metrics import Metrics
from ..status import Reason, Status
from ..store import Store
from .keepers import Keepers


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


class Answer(Protocol):
    """A live answer as its parts see it (``stream.Stream`` is the one there is)."""

    trace_id: str
    session_id: str | None
    message_id: int | None
    config: Config
    metrics: Metrics
    scope: CancelScope
    outcome: Outcome
    started_at: float
    store: Store | None
    lease: Lease | None
    framer: Framer
    keepers: Keepers
    client_gone: Callable[[], bool] | None
    detach_grace_s: float
    release: Callable[[Any], None]
    worker: Any  # worker.Worker: named loosely, so that worker.py need not be imported here
    prev: Any  # the worker this answer's worker waits for, or None

    @property
    def status(self) -> Status | None: ...

    def cancel(self, reason: Reason) -> bool: ...
