"""The embedded model's single slot: who holds the model, who waits for it, and the holder's deadlines.

One llama context runs one generation at a time. The prompt holding the slot
generates; others wait in a bounded queue, woken by a hand-off or their own
cancel. The holder's ``abort`` flag and ``Deadline`` are what the abort
callback reads during every decode.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

from ..cancel import CancelScope
from ..errors import AtCapacity, UpstreamTimeout, UpstreamUnavailable
from . import Progress

WAIT_SLICE_S = 0.25  # longest single wait in the queue; cancel and close wake it sooner


class Ticket:
    """One request's place: waiting in the queue, holding the model, or gone."""

    __slots__ = ("session", "cancel", "state")

    def __init__(self, session: str | None, cancel: CancelScope):
        self.session = session
        self.cancel = cancel
        self.state = "waiting"  # -> holding -> left, or waiting -> left | closed


class Slot:
    """The single model slot: its holder, the queue behind it, and the holder's abort flag."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self.abort = False  # read by llama.cpp during every decode
        self.closed = False
        self._cond = threading.Condition()
        self._holder: Ticket | None = None
        self._waiting: list[Ticket] = []

    def join(self, session: str | None, cancel: CancelScope) -> Ticket:
        """Take the model if it is free, else queue; AtCapacity when the queue is full."""
        ticket = Ticket(session, cancel)
        with self._cond:
            if self.closed:
                raise UpstreamUnavailable("the local model is shut down")
            if self._holder is None:
                self._grant(ticket)
                return ticket
            if len(self._waiting) >= self.max_waiting:
                raise AtCapacity(f"{len(self._waiting)} prompts are already waiting for the local model")
            self._waiting.append(ticket)
            if self._holder.cancel.cancelled:
                self._promote(self._holder.session)
        return ticket

    def turn(self, ticket: Ticket, until: float, limit_s: float) -> Iterator[Progress]:
        """Wait in line until ``until`` (a monotonic time, ``limit_s`` after the prompt came),
        yielding ``Progress("queued", position)`` whenever the position changes."""
        shown = None
        while ticket.state == "waiting":
            position = self.position(ticket)
            if position and position != shown:
                shown = position
                yield Progress("queued", position=position)
            left = until - time.monotonic()
            if left <= 0:
                raise UpstreamTimeout(
                    f"waited {limit_s:g} s for the local model to be free", code="first_token_timeout"
                )
            self.wait(ticket, min(WAIT_SLICE_S, left))  # checkpoint: woken by cancel and hand-off

    def position(self, ticket: Ticket) -> int:
        """1 for the next in line; 0 once it holds the model or left."""
        with self._cond:
            return self._waiting.index(ticket) + 1 if ticket.state == "waiting" else 0

    def wait(self, ticket: Ticket, timeout: float) -> None:
        with self._cond:
            if ticket.state == "waiting":
                self._cond.wait(timeout)

    def on_cancel(self, ticket: Ticket) -> None:
        """Run by the cancelling thread: leave the queue at once, or abort the decode."""
        with self._cond:
            if ticket.state == "waiting":
                self._waiting.remove(ticket)
                ticket.state = "left"
                self._cond.notify_all()
            elif ticket.state == "holding":
                self.abort = True
                self._promote(ticket.session)  # a superseded holder: the session's new prompt goes next

    def leave(self, ticket: Ticket) -> bool:
        """Give the slot up (or the place in the queue); True when the caller must free the model."""
        with self._cond:
            if ticket.state == "waiting":
                self._waiting.remove(ticket)
            elif ticket.state == "holding":
                self._holder = None
                if self._waiting:
                    self._grant(self._waiting.pop(0))
                self._cond.notify_all()
                ticket.state = "left"
                return self.closed
            ticket.state = "left"
            self._cond.notify_all()
            return False

    def close(self) -> bool:
        """Refuse new prompts and abort the holder; True when nobody holds the model."""
        with self._cond:
            if self.closed:
                return False
            self.closed = True
            for ticket in self._waiting:
                ticket.state = "closed"
            self._waiting.clear()
            if self._holder is not None:
                self.abort = True
            self._cond.notify_all()
            return self._holder is None

    def _grant(self, ticket: Ticket) -> None:
        ticket.state = "holding"
        self._holder = ticket
        self.abort = False

    def _promote(self, session: str | None) -> None:
        if session is None:
            return
        same = [t for t in self._waiting if t.session == session]
        if same:
            self._waiting = same + [t for t in self._waiting if t.session != session]
            self._cond.notify_all()


class Deadline:
    """The holder's next deadline: the first token, then each gap between tokens, within the total."""

    def __init__(self, first_token_s: float, idle_s: float, total_s: float):
        self.first_token_s, self.idle_s, self.total_s = first_token_s, idle_s, total_s
        self.at = math.inf  # read by the abort callback during every decode
        self.code = ""
        self._total_at = math.inf

    def start(self, started: float) -> None:
        self._total_at = started + self.total_s
        self._set(started + self.first_token_s, "first_token_timeout")

    def token(self) -> None:
        self._set(time.monotonic() + self.idle_s, "idle_timeout")

    def clear(self) -> None:
        self.at = math.inf

    def passed(self) -> bool:
        return time.monotonic() > self.at

    def check(self) -> None:
        if self.passed():
            raise self.error()

    def error(self) -> UpstreamTimeout:
        message = {
            "first_token_timeout": f"no answer from the local model within {self.first_token_s:g} s",
            "idle_timeout": f"the local model was silent for more than {self.idle_s:g} s",
            "total_timeout": f"the answer took longer than {self.total_s:g} s",
        }[self.code]
        return UpstreamTimeout(message, code=self.code)

    def _set(self, at: float, code: str) -> None:
        self.code = code if at < self._total_at else "total_timeout"
        self.at = min(at, self._total_at)
