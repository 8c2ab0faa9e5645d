"""Server-Sent Events: framing as one pure function, and the one parser of what it frames.

Every payload is JSON on a single ``data:`` line: ``json.dumps`` escapes the
newlines a token may hold, so no model output can break a frame. The parser is
shared by the CLI, the tests and the benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from .events import End, Event, Heartbeat, Progress, Start, Text

HEARTBEAT = b": hb\n\n"


def event(name: str, data: dict, id: str | int | None = None) -> bytes:
    """Frame one SSE event."""
    head = f"id: {id}\nevent: {name}\n" if id is not None else f"event: {name}\n"
    return (head + "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n").encode()


class SSEFramer:
    """Jarvis's own dialect: start, token, status (progress) and end events; comments as heartbeats."""

    def frame(self, ev: Event, id: str | None = None) -> bytes:
        """Every event of an answer carries its id: a reader that reconnects sends it as Last-Event-ID."""
        if isinstance(ev, Text):
            return event("token", {"text": ev.text}, id)
        if isinstance(ev, Heartbeat):
            return HEARTBEAT
        if isinstance(ev, Progress):  # named "status" on the wire, as before "loading" and "reading" came
            fields = {"state": ev.state, "position": ev.position, "tokens": ev.tokens}
            return event("status", {k: v for k, v in fields.items() if v is not None}, id)
        if isinstance(ev, Start):
            data = {"trace_id": ev.trace_id, "message_id": ev.message_id}
            return event("start", data | {"user_message_id": ev.user_message_id, "model": ev.model}, id)
        if isinstance(ev, End):
            end = {"status": str(ev.status)}
            if ev.reason:
                end["reason"] = str(ev.reason)
            if ev.error:
                end["error"] = ev.error
            if ev.meta:
                end["meta"] = ev.meta  # usage and timing: the page shows the speed
            return event("end", end, id)
        raise TypeError(f"not a stream event: {ev!r}")


def parse(lines: Iterable[bytes | str]) -> Iterator[tuple[str | None, dict | None]]:
    """Read SSE lines (without their newline); yield (name, data) per event and (None, None) per comment."""
    name, data = None, None
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if line.startswith(":"):
            yield None, None
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and name is not None:
            yield name, data
            name, data = None, None
