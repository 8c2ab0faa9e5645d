"""The measuring client: raw sockets, so every timestamp is the moment bytes arrived.

``requests`` buffers and pools; a benchmark needs to know when the bytes of one
event came off the socket, so responses are read here with ``recv`` and parsed
by hand (chunked framing, NDJSON lines) or by Jarvis's SSE parser. Every read has a socket
timeout and every loop a deadline: a server that hangs fails a trial, never
the run.
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from jarvis import sse

# the local token every Jarvis the benchmarks start is given (no request is served without one);
# the reference server ignores it
LOCAL_TOKEN = "bench-local-token-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {LOCAL_TOKEN}"}

RECV = 65536
DEFAULT_TIMEOUT_S = 10.0


class ProtocolError(Exception):
    """The server answered something this client cannot read."""


class Closed(Exception):
    """The connection ended before what we waited for arrived."""


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass
class Event:
    """One SSE event (or an Ollama NDJSON line, named ``line``) and when it arrived."""

    name: str
    data: dict | None
    at: float  # time.monotonic() when the recv that completed it returned


class _Chunked:
    """Incremental decoder of HTTP/1.1 chunked bodies; offsets, not slicing, so it stays linear."""

    def __init__(self) -> None:
        self.buf = b""
        self.left = 0  # bytes still due in the current chunk
        self.crlf = False  # a CRLF is due after the chunk just read
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self.buf + data if self.buf else data
        pos, out, end = 0, [], len(buf)
        while not self.done:
            if self.left:
                take = min(self.left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.left -= take
                if self.left:
                    break
                self.crlf = True
            if self.crlf:
                if end - pos < 2:
                    break
                pos += 2
                self.crlf = False
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            try:
                size = int(buf[pos:nl].split(b";")[0], 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {buf[pos:nl][:40]!r}") from None
            pos = nl + 2
            if size == 0:
                self.done = True
            self.left = size
        self.buf = buf[pos:]
        return b"".join(out)


class _Response:
    """An HTTP response read from a raw socket: status, headers, then body bytes as they come."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunked: _Chunked | None = None
        self.eof = False
        head = b""
        while b"\r\n\r\n" not in head:
            data = self._recv(deadline)
            if not data:
                raise Closed("connection closed before the response head")
            head += data
            if len(head) > 65536:
                raise ProtocolError("response head larger than 64 KB")
        self.head_at = time.monotonic()
        head, _, early = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            self.status = int(lines[0].split(" ")[1])
        except (IndexError, ValueError):
            raise ProtocolError(f"bad status line {lines[0][:60]!r}") from None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self.chunked = _Chunked()
        self.early = self._decode(early)  # body bytes that came with the head

    def _decode(self, data: bytes) -> bytes:
        if self.chunked is not None:
            data = self.chunked.feed(data)
            if self.chunked.done:
                self.eof = True
        return data

    def _recv(self, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv(RECV)

    def read_some(self, deadline: float) -> tuple[bytes, float]:
        """Body bytes (maybe none) and when they arrived; b"" with ``eof`` set at the end."""
        data = self._recv(deadline)
        at = time.monotonic()
        if not data:
            self.eof = True
            return b"", at
        return self._decode(data), at


def _connect(url: str, timeout: float) -> socket.socket:
    sock = socket.create_connection(host_port(url), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _post_bytes(url: str, path: str, body: dict) -> bytes:
    host, port = host_port(url)
    payload = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: {AUTH['Authorization']}\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload


class Parser:
    """Splits body bytes into events: Jarvis's SSE events, Ollama's NDJSON lines (named ``line``),
    or an OpenAI-compatible server's SSE chunks (kind ``openai``, named ``line`` as well, and
    ``done`` for its [DONE]). Server-sent events are read by Jarvis's own parser."""

    def __init__(self, kind: str):
        self.kind = kind
        self.texts: list[str] = []  # token texts in arrival order
        self._pending = b""  # NDJSON: the start of a line still arriving
        self._sse = sse.Parser()

    @property
    def heartbeats(self) -> int:
        return self._sse.comments

    def feed(self, data: bytes, at: float) -> list[Event]:
        """Parse bytes that arrived at ``at``; returns the events they completed."""
        if not data:
            return []
        if self.kind == "ndjson":
            *lines, self._pending = (self._pending + data).split(b"\n")
            return [self._line(line, at) for line in lines if line.strip()]
        read = self._openai if self.kind == "openai" else self._event
        return [read(frame, at) for frame in self._sse.feed(data)]

    def _line(self, line: bytes, at: float) -> Event:
        data = json.loads(line)
        text = (data.get("message") or {}).get("content")
        if text:
            self.texts.append(text)
        return Event("line", data, at)

    def _event(self, frame: sse.Frame, at: float) -> Event:
        data = frame.json()
        if frame.event == "token":
            self.texts.append(data["text"])
        return Event(frame.event, data, at)

    def _openai(self, frame: sse.Frame, at: float) -> Event:
        if frame.data == b"[DONE]":
            return Event("done", {}, at)
        chunk = json.loads(frame.data)
        text = "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])
        if text:
            self.texts.append(text)
        return Event("line", {"message": {"content": text}}, at)


class EventStream:
    """One streamed POST (SSE from a Jarvis API, or NDJSON from Ollama), read event by event.

    ``sent_at`` is taken just before the request bytes go out. Events keep the
    time their last byte arrived. ``kind`` is "sse" or "ndjson".
    """

    def __init__(
        self, url: str, path: str, body: dict, kind: str = "sse", timeout: float = DEFAULT_TIMEOUT_S
    ):
        self.parser = Parser(kind)
        self.events: list[Event] = []
        self.error: dict | None = None
        self.tokens_seen = 0  # token texts received; the fake ends each token with one space
        self.sock = _connect(url, timeout)
        request = _post_bytes(url, path, body)
        self.sent_at = time.monotonic()
        try:
            self.sock.sendall(request)
            self.response = _Response(self.sock, self.sent_at + timeout)
        except OSError:
            self.sock.close()
            raise
        self._next = 0  # index of the first event not yet handed out by next()
        self.status = self.response.status
        if self.status != 200:
            self.error = self._error_body(self.sent_at + timeout)
        else:
            self._take(self.response.early, self.response.head_at)

    def _error_body(self, deadline: float) -> dict:
        body = self.response.early
        while not self.response.eof and len(body) < 65536:
            data, _ = self.response.read_some(deadline)
            body += data
        self.close()
        try:
            return json.loads(body)
        except ValueError:
            return {"raw": body[:200].decode("utf-8", "replace")}

    @property
    def ended(self) -> bool:
        return self.response.eof

    def fileno(self) -> int:
        return self.sock.fileno()

    def pump(self, deadline: float) -> list[Event]:
        """Read once (blocking until bytes or the deadline) and return the events completed."""
        data, at = self.response.read_some(deadline)
        return self._take(data, at)

    def _take(self, data: bytes, at: float) -> list[Event]:
        events = self.parser.feed(data, at)
        for e in events:
            if e.name in ("token", "line") and e.data:
                self.tokens_seen += _text_of(e).count(" ")
        self.events.extend(events)
        return events

    def next(self, deadline: float) -> Event:
        """The next event; raises TimeoutError at the deadline, Closed at the end of the body."""
        while self._next >= len(self.events):
            if self.response.eof:
                raise Closed("the stream ended")
            self.pump(deadline)
        self._next += 1
        return self.events[self._next - 1]

    def until(self, names: tuple[str, ...], deadline: float) -> Event:
        """Skip to the next event named one of ``names``."""
        while True:
            event = self.next(deadline)
            if event.name in names:
                return event

    def tokens(self, count: int, deadline: float) -> Event:
        """Read until ``count`` tokens have arrived in total (or the end); returns the last event."""
        while True:
            event = self.until(("token", "line", "end"), deadline)
            if event.name == "end" or self.tokens_seen >= count:
                return event

    def read_all(self, deadline: float) -> None:
        """Read to the end of the body (bounded by the deadline)."""
        while not self.response.eof:
            self.pump(deadline)

    def text(self) -> str:
        return "".join(self.parser.texts)

    def end(self) -> dict | None:
        e = self.end_event()
        return e.data if e is not None else None

    def end_event(self) -> Event | None:
        for e in reversed(self.events):
            if e.name == "end":
                return e
        return None

    def close(self) -> None:
        self.sock.close()


def _text_of(event: Event) -> str:
    if event.name == "line":
        return (event.data.get("message") or {}).get("content") or ""
    return event.data.get("text", "")


class BulkStream:
    """A streamed POST read to its end as fast as possible, parsed afterwards (throughput runs)."""

    def __init__(self, url: str, path: str, body: dict, kind: str = "sse", timeout: float = 60.0):
        self.kind = kind
        self.sock = _connect(url, DEFAULT_TIMEOUT_S)
        request = _post_bytes(url, path, body)
        self.sent_at = time.monotonic()
        self.first_at: float | None = None
        self.done_at: float | None = None
        self.body = b""
        try:
            self.sock.sendall(request)
            response = _Response(self.sock, self.sent_at + timeout)
            if response.status != 200:
                raise ProtocolError(f"HTTP {response.status}")
            parts = [response.early] if response.early else []
            if parts:
                self.first_at = response.head_at
            deadline = self.sent_at + timeout
            while not response.eof:
                data, at = response.read_some(deadline)
                if data:
                    if self.first_at is None:
                        self.first_at = at
                    parts.append(data)
            self.done_at = time.monotonic()
            self.body = b"".join(parts)
        finally:
            self.sock.close()

    def text(self) -> str:
        parser = Parser(self.kind)
        parser.feed(self.body + (b"\n" if self.kind == "ndjson" else b"\n\n"), self.done_at or 0.0)
        return "".join(parser.texts)


class Control:
    """Keep-alive JSON calls (sessions, stop, health) over http.client; reconnects once if dropped."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_S):
        self.host, self.port = host_port(url)
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.connect()
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.conn

    def send(self, method: str, path: str, body: dict | None = None) -> float:
        """Send a request without reading the answer; returns when it went out."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {**AUTH, "Content-Type": "application/json"} if payload is not None else dict(AUTH)
        for attempt in (1, 2):
            conn = self._connection()
            try:
                at = time.monotonic()
                conn.request(method, path, body=payload, headers=headers)
                return at
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def read(self) -> tuple[int, dict]:
        """Read the answer to the last ``send``."""
        conn = self._connection()
        try:
            response = conn.getresponse()
            body = response.read()
        except (ConnectionError, http.client.HTTPException):
            self.close()
            raise
        if response.will_close:
            self.close()
        try:
            return response.status, json.loads(body) if body else {}
        except ValueError:
            return response.status, {"raw": body[:200].decode("utf-8", "replace")}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One request and its answer; retried once on a dropped keep-alive connection."""
        for attempt in (1, 2):
            self.send(method, path, body)
            try:
                return self.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def session(self) -> str:
        status, body = self.call("POST", "/api/sessions")
        if status not in (200, 201) or "id" not in body:
            raise ProtocolError(f"POST /api/sessions answered {status}: {body}")
        return body["id"]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Mux:
    """Reads many event streams from one thread, so hundreds of streams need no client threads."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.failed: list[tuple[EventStream, str]] = []
        self._open = 0

    def add(self, stream: EventStream) -> None:
        if not stream.ended:
            self.selector.register(stream.sock, selectors.EVENT_READ, stream)
            self._open += 1

    def _drop(self, stream: EventStream) -> None:
        self.selector.unregister(stream.sock)
        self._open -= 1

    @property
    def open(self) -> int:
        return self._open

    def run(self, deadline: float, on_events, until=lambda: False) -> None:
        """Pump readable streams until all ended, ``until()`` is true, or the deadline passes."""
        while self._open and not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for key, _ in self.selector.select(min(left, 0.05)):
                stream = key.data
                try:
                    events = stream.pump(deadline)
                except (OSError, ProtocolError) as e:
                    self.failed.append((stream, type(e).__name__))
                    self._drop(stream)
                    continue
                if events:
                    on_events(stream, events)
                if stream.ended:
                    self._drop(stream)

    def close(self) -> None:
        self.selector.close()


def sse_events(response) -> Iterator[tuple[str, dict]]:
    """The named events of a streamed ``requests`` response, read by Jarvis's own SSE parser."""
    for frame in sse.frames(response.iter_content(chunk_size=None)):
        yield frame.event, frame.json()


def stop_to_end_ms(
    url: str, prompt: str, after: str = "start", settle_s: float = 0.0, read_s: float = 10.0
) -> float | None:
    """Milliseconds from POST stop to the end event of a new prompt's stream, stopped once
    ``after`` has arrived (and ``settle_s`` more); None when no end came."""
    sid = requests.post(url + "/api/sessions", headers=AUTH, timeout=5).json()["id"]
    with requests.post(
        f"{url}/api/sessions/{sid}/messages",
        json={"content": prompt},
        headers=AUTH,
        stream=True,
        timeout=(5, read_s),
    ) as r:
        events = sse_events(r)
        for name, _ in events:
            if name == after:
                break
        if settle_s:
            time.sleep(settle_s)
        began = time.monotonic()
        requests.post(f"{url}/api/sessions/{sid}/stop", headers=AUTH, timeout=(5, 10))
        for name, _ in events:
            if name == "end":
                return (time.monotonic() - began) * 1000
    return None
