"""Server-Sent Events: framing as one pure function, and the one parser of any event stream.

Every payload is JSON on a single ``data:`` line: ``json.dumps`` escapes the
newlines a token may hold, so no model output can break a frame. The parser
reads Jarvis's own streams and an OpenAI-compatible server's alike: the
upstream reader, the CLI, the tests and the benchmarks share it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .events import End, Event, Heartbeat, Progress, Start, Text, Thinking, ToolCall, ToolResult

HEARTBEAT = b": hb\n\n"


def event(name: str, data: dict, id: str | int | None = None) -> bytes:
    """Frame one SSE event."""
    head = f"id: {id}\nevent: {name}\n" if id is not None else f"event: {name}\n"
    return (head + "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n").encode()


class SSEFramer:
    """Jarvis's own dialect: start, token, thinking, tool_call, tool_result, status (progress) and end
    events;
    comments as heartbeats."""

    def frame(self, ev: Event, id: str | None = None) -> bytes:
        """Every event of an answer carries its id: a reader that reconnects sends it as Last-Event-ID."""
        if isinstance(ev, Text):  # first: nearly every event is one
            return event("token", {"text": ev.text}, id)
        if isinstance(ev, Heartbeat):
            return HEARTBEAT
        shaped = _SHAPES.get(type(ev))
        if shaped is None:
            raise TypeError(f"not a stream event: {ev!r}")
        name, data = shaped(ev)
        return event(name, data, id)


def _progress(ev: Progress) -> tuple[str, dict]:
    # named "status" on the wire, as before "loading" and "reading" came
    fields = {"state": ev.state, "position": ev.position, "tokens": ev.tokens}
    return "status", {k: v for k, v in fields.items() if v is not None}


def _start(ev: Start) -> tuple[str, dict]:
    data = {"trace_id": ev.trace_id, "message_id": ev.message_id}
    return "start", data | {"user_message_id": ev.user_message_id, "model": ev.model}


def _end(ev: End) -> tuple[str, dict]:
    end: dict = {"status": str(ev.status)}
    if ev.reason:
        end["reason"] = str(ev.reason)
    if ev.error:
        end["error"] = ev.error
    if ev.meta:
        end["meta"] = ev.meta  # usage and timing: the page shows the speed
    return "end", end


_SHAPES = {
    Thinking: lambda ev: ("thinking", {"text": ev.text}),
    ToolCall: lambda ev: ("tool_call", ev.to_dict()),
    ToolResult: lambda ev: ("tool_result", ev.to_dict()),
    Progress: _progress,
    Start: _start,
    End: _end,
}


@dataclass(slots=True)
class Frame:
    """One event as a reader receives it (a slotted class: the upstream reader makes one per token)."""

    event: str  # "message" when the stream named none
    data: bytes  # its data lines, joined by newlines
    id: str | None  # the last event ID so far (it carries over to later events), None before any

    def json(self):
        return json.loads(self.data)


class Parser:
    """Reads server-sent events incrementally, by the WHATWG EventSource rules.

    Feed it bytes as they arrive (``feed``) or lines already split (``lines``); each
    call returns the events it completed. A blank line ends an event; ``data:`` lines
    join with newlines; ``event:`` names it; ``id:`` sets the last event ID (one with a
    NUL is ignored); ``retry:`` sets ``retry_ms``; comment lines (``:``) only count;
    one space after the colon is not part of the value; other fields are ignored.
    """

    def __init__(self) -> None:
        self.comments = 0  # comment lines seen: heartbeats, keep-alives
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self._data: list[bytes] = []
        self._event = ""
        self._pending = b""  # the start of a line whose end has not come
        self._after_cr = False  # the last chunk ended in CR: a LF first in the next ends the same line
        self._started = False

    def feed(self, chunk: bytes) -> list[Frame]:
        """The events completed by these bytes; lines end in LF, CRLF or CR."""
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        buf = self._pending + chunk if self._pending else chunk
        if not self._started:  # a byte order mark opens no line
            if len(buf) < len(BOM) and BOM.startswith(buf):
                self._pending = buf
                return []
            self._started = True
            buf = buf.removeprefix(BOM)
        if b"\r" in buf:
            self._after_cr = buf.endswith(b"\r")
            lines = _LINE_END.split(buf)
        else:
            self._after_cr = False
            lines = buf.split(b"\n")
        self._pending = lines.pop()
        return self.lines(lines)

    def lines(self, lines: Iterable[bytes]) -> list[Frame]:
        """The events completed by these lines (split already, without their line ends)."""
        out, data = [], self._data
        for line in lines:
            if not line:  # dispatch: an event without data is none
                if data:
                    joined = data[0] if len(data) == 1 else b"\n".join(data)
                    out.append(Frame(self._event or "message", joined, self.last_id))
                    data = self._data = []
                self._event = ""
            elif line.startswith(b"data: "):  # first: nearly every line is one
                data.append(line[6:])
            elif line[:1] == b":":
                self.comments += 1
            else:
                self._field(line)
        return out

    def flush(self) -> list[Frame]:
        """The event a body left without its closing blank line. The standard drops it; a model
        server whose body closes right after its last event meant it, so its reader asks."""
        line, self._pending = self._pending, b""
        return self.lines([line, b""] if line else [b""])

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":  # "data" without a colon: an empty line of data
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self.last_id = value.decode("utf-8", "replace") or None
        elif name == b"retry" and value.isdigit():
            self.retry_ms = int(value)


_LINE_END = re.compile(rb"\r\n|\r|\n")
BOM = b"\xef\xbb\xbf"


def frames(chunks: Iterable[bytes]) -> Iterator[Frame]:
    """The events of a byte stream as its chunks arrive (a streamed HTTP body, say)."""
    parser = Parser()
    for chunk in chunks:
        yield from parser.feed(chunk)
