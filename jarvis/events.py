"""What a stream tells its client, before any wire format: start, progress, text, thinking, tool calls,
heartbeat, end.

A response body turns these into bytes through a framer (Jarvis's SSE in
``sse.py``; other dialects bring their own), and an in-process caller can read
them directly to build one JSON answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .conversation import Thinking, ToolCall, ToolResult


@dataclass(frozen=True)
class Start:
    trace_id: str
    model: str
    message_id: int | None = None
    user_message_id: int | None = None


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Progress:
    """Before the first text, what the answer waits for: "queued" at ``position`` in line, "loading"
    the model, "reading" a prompt of ``tokens`` tokens, or "waiting" for a server that says no more."""

    state: str
    position: int | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class Heartbeat:
    """Nothing to say for a while; a write is how a plain WSGI host notices a gone client."""


@dataclass(frozen=True)
class End:
    status: str  # a terminal status (jarvis.status.Status)
    reason: str | None = None  # the cancel reason, when a cancel ended it
    error: dict | None = None  # {"code": ..., "message": ...}
    meta: dict = field(default_factory=dict)  # usage, trims: what is stored with the answer


Event = Start | Text | Thinking | ToolCall | ToolResult | Progress | Heartbeat | End

HEARTBEAT = Heartbeat()


class Framer(Protocol):
    """Turns events into the bytes of one response dialect."""

    def frame(self, event: Event, id: str | None = None) -> bytes:
        """Bytes for ``event``; for a Heartbeat, whatever keeps the dialect valid (b"" is allowed).
        ``id`` names the event within its answer, for a dialect that can carry it."""
        ...
