"""Several processes on one Redis: leases, the control channel, stream slots, the mirror.

The wing owns what one process cannot see alone: the session leases and their tickets
(``lease.py``), the pub/sub control channel (``control.py``), an account's stream slots counted in
every process (``limits.py``), the mirror through which a reader in one process follows an answer
running in another (``mirror.py``), the Redis connection they share (``link.py``) and the
``Coordinator`` that composes them and owns their threads (``coord.py``).

It may import the foundation (config, errors, log, cancel, events, sse, status) and the redis
client, never the lifecycle: what it needs from the registry and the streams it receives as
callbacks and objects typed by the protocols below. The lifecycle imports these protocols (not the
classes behind them) for what it holds and calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from ..cancel import CancelScope
from ..events import Event, Framer
from ..status import Reason

# what the cluster needs from the lifecycle


class LiveStream(Protocol):
    """What the cluster sees of a stream: its names, and its cancel when the lease is lost."""

    key: str | None
    trace_id: str
    owner: int | None
    scope: CancelScope

    def cancel(self, reason: Reason) -> bool: ...


class Tap(Protocol):
    """A reader of a live answer, as a mirror pump copies it to a reader in another process."""

    framer: Framer
    cursor: int  # how many of the answer's events have been handed to this reader

    def events(self) -> Iterator[tuple[str | None, Event]]: ...

    def close(self) -> None: ...


class CancelOlder(Protocol):
    """The registry's ``cancel_older``: cancel this process's streams of ``key`` below ``ticket``."""

    def __call__(self, key: str, ticket: int, reason: Reason) -> object: ...


class Attach(Protocol):
    """The registry's ``attach``: a Tap on ``key``'s live answer here, or None."""

    def __call__(
        self, key: str, last_event_id: str | None = None, client_gone: Callable[[], bool] | None = None
    ) -> Tap | None: ...


# what the lifecycle holds and calls


class Lease(Protocol):
    """One stream's claim on its session: a ticket now, the Redis lease while its worker calls upstream."""

    key: str
    ticket: int  # strictly increasing per session: a newer prompt's is higher
    value: str  # "process trace ticket", as the lease key holds it

    def bind(self, stream: LiveStream) -> None: ...

    def acquire(self, scope: CancelScope, deadline: float) -> bool: ...

    def release(self) -> None: ...


class Slot(Protocol):
    """One of an account's streams, counted in every process until it is freed."""

    redis_key: str  # the account's sorted set
    member: str  # this stream in it


class Coordination(Protocol):
    """What the registry calls on the coordinator."""

    def claim(self, key: str, trace_id: str) -> Lease: ...

    def take_slot(self, stream: LiveStream, limit: int) -> Slot: ...

    def free_slot(self, slot: Slot) -> None: ...

    def stop(self, key: str, reason: Reason) -> bool: ...
