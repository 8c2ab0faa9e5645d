"""A fake Ollama: a real HTTP server on 127.0.0.1:0, scripted per request.

It speaks just enough of Ollama's API (``POST /api/chat`` and ``/api/generate`` as chunked NDJSON
with thinking, tool calls, JSON for a ``format`` and a note of the images it was sent; ``POST
/api/show`` with each model's capabilities; ``/api/embed``, ``/api/embeddings`` with
``fake_wire.vector``s; ``GET /api/tags``, ``/api/ps``, ``/api/version``) and records, for every
call, what it was sent and when and by whom its connection was closed, so tests and benchmarks can
see what reached the upstream socket. Every wait watches the client socket: a client that goes
away is seen at once.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

from tests import fake_wire
from tests.fake_wire import Body, ClientGone, read_request, send_json

OK_MODELS = ("llama3.2", "tiny")
KEEP_ALIVE_S = 5.0  # how long a connection kept after an embedding waits for its next request

# Every fake's chat calls whose connection is still open, so that calls to two fakes (two hosts) are
# judged as well as calls to one.
_open_calls: dict[int, Call] = {}
_open_lock = threading.Lock()


def _one(make: Callable[..., bytes], *args) -> list[bytes]:
    return [make(*args)]


@dataclass
class Script:
    """What the fake does with one ``/api/chat`` request."""

    tokens: int | list[str] = 5  # a count ("tok0 ", "tok1 ", ...) or the exact texts
    interval_s: float = 0.0  # pause before each token after the first
    load_delay_s: float = 0.0  # silence before the response headers (a model loading)
    # k counts what streams, in order: thinking chunks, text tokens, then the tool calls (as one)
    stall_after: int | None = None  # after k tokens, send nothing until the client leaves
    error_after: int | None = None  # after k tokens, send an {"error": ...} line
    drop_after: int | None = None  # after k tokens, close the connection mid-body
    status: int = 200  # an HTTP error status answers with {"error": error}
    error: str = "something broke upstream"
    raw: list[bytes] | None = None  # hostile bodies: send these chunks, then end
    forever: bytes | None = None  # a body that never ends: this chunk again and again
    refuse: bool = False  # reset the connection instead of answering
    done_reason: str = "stop"  # "length": the answer was cut by a token limit
    framing: str = "chunked"  # or "length" (Content-Length, as a buffering proxy sends) or "close"
    thinking: list[str] | None = None  # thinking chunks, streamed before the text
    tool_calls: list[dict] | None = None  # [{"name", "arguments", optional "id"}], after the text
    json_answer: bool = True  # a format request is answered with JSON (False: the tokens as they are)

    def texts(self) -> Sequence[str]:
        if isinstance(self.tokens, int):
            return Numbered(self.tokens)
        return list(self.tokens)


class Numbered(Sequence):
    """The texts "tok0 ", "tok1 ", ... made as they are read.

    A list of them cost a script of 100,000 tokens 100,000 strings: with 64 such answers
    streaming, the fake's garbage collector walked millions of objects and held every one of its
    threads for hundreds of milliseconds, in the middle of what a benchmark times."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.count))]
        if not -self.count <= i < self.count:
            raise IndexError(i)
        return f"tok{i % self.count} "

    def __iter__(self) -> Iterator[str]:
        return (f"tok{i} " for i in range(self.count))


@dataclass
class Pieces:
    """What streams, in order: thinking chunks, text tokens (made as they are read), tool calls;
    each piece the maker of its frames."""

    thinking: list[Callable[[], list[bytes]]]
    texts: Sequence[str]
    token: Callable[[str], list[bytes]]
    tools: list[Callable[[], list[bytes]]]

    def __len__(self) -> int:
        return len(self.thinking) + len(self.texts) + len(self.tools)

    def __iter__(self) -> Iterator[Callable[[], list[bytes]]]:
        yield from self.thinking
        for text in self.texts:
            yield partial(self.token, text)
        yield from self.tools


@dataclass
class Call:
    """One request the fake received, as the fake saw it."""

    path: str
    body: dict
    opened_at: float
    closed_at: float | None = None
    closed_by: str | None = None  # "client" (it hung up first) or "server"
    tokens_sent: int = 0
    closed: threading.Event = field(default_factory=threading.Event)
    sock: socket.socket | None = field(default=None, repr=False)
    headers: dict = field(default_factory=dict, repr=False)  # names in lower case
    alongside: list[Call] = field(default_factory=list, repr=False)  # see overlapped()
    connection: int = 0  # which accepted connection carried it (an embedding's is kept for more)
    kept: bool = False  # answered with the connection kept open for the next request

    @property
    def prompt(self) -> str:
        messages = self.body.get("messages") or [{}]
        return fake_wire.text_of(messages[-1].get("content", ""))

    @property
    def images(self) -> list[str]:
        """The base64 images the request carried, in order, in either dialect."""
        return fake_wire.images_in(self.body)

    def wait_closed(self, timeout: float) -> bool:
        return self.closed.wait(timeout)


class FakeOllama:
    """Start with ``with FakeOllama() as fake:``; ``fake.url`` is its base URL."""

    CHAT_PATH = "/api/chat"
    streamed = (CHAT_PATH, "/api/generate")  # answered as a stream, by the script
    embedding = ("/api/embed", "/api/embeddings")  # answered with the connection kept, as Ollama does
    kind = "ollama"  # the JARVIS_BACKEND that reads it
    wire = fake_wire.OllamaFrames()  # how an answer is framed; a fake of another server has its own

    def __init__(self, models=OK_MODELS, key=None, port=0, capabilities: dict[str, list[str]] | None = None):
        self.models = list(models)
        self.capabilities = dict(capabilities or {})  # model -> its capabilities; unnamed: all of them
        self.key = key  # body -> session key; set to detect overlapping calls of one session
        self.overlaps: list[tuple[Call, Call]] = []
        self.default = Script()
        self._queued: deque[Script] = deque()
        self.calls: list[Call] = []
        self.connections = 0  # accepted so far
        self.embed_delay_s = 0.0  # how long an embedding takes (watching the client meanwhile)
        self.embed_text: str | None = None  # the JSON an embedding is answered with, exactly (hostile ones)
        # what the next requests on kept connections meet: "drop" (read, then the connection closed
        # with no answer, as a server that timed it out just then) or "half" (a status line, then closed)
        self.kept_faults: deque[str] = deque()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._sock = socket.create_server(("127.0.0.1", port))  # a port: a server back where it was
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept_loop, name="fake-ollama-accept")
        self._acceptor.start()

    # scripting
    def script(self, script=None, **kw) -> None:
        """Set what every following chat request does (a Script, or a function of the body)."""
        self.default = script or Script(**kw)

    def push(self, *scripts: Script) -> None:
        """Queue scripts for the next chat requests, in order; then the default."""
        with self._lock:
            self._queued.extend(scripts)

    # observation
    def chat_calls(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path == self.CHAT_PATH]

    def wait_for_calls(self, n: int, timeout: float = 5.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(c.path == self.CHAT_PATH for c in self.calls) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake Ollama saw fewer than {n} chat calls in {timeout}s")
                self._changed.wait(left)
        return self.chat_calls()[:n]

    def wait_idle(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.active:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake Ollama still has {self.active} open chat calls")
                self._changed.wait(left)

    # lifecycle
    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._acceptor.join(timeout)
        self._sock.close()
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive or self._acceptor.is_alive():
            raise RuntimeError(f"fake Ollama threads still running: {alive}")

    def __enter__(self) -> FakeOllama:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), name="fake-ollama-conn")
            with self._lock:
                self._threads = {x for x in self._threads if x.is_alive()}
                self._threads.add(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        call = None
        kept: list[Call] = []  # the calls answered earlier on this connection, kept open after them
        with self._lock:
            self.connections += 1
            number = self.connections
        try:
            conn.settimeout(5.0)
            while call is None or (call.kept and self._next_request(conn)):
                if call is not None:
                    kept.append(call)
                    call = None
                path, headers, body = read_request(conn)
                call = Call(path=path, body=body, opened_at=time.monotonic(), sock=conn, headers=headers)
                call.connection = number
                if kept and self._kept_fault(conn, call):
                    break
                self._serve_one(conn, call)
            if call.closed_by is None:
                call.closed_by = "client" if call.kept else "server"  # a kept one ends when the client leaves
        except ClientGone:
            if call is not None:
                call.closed_by = "client"
        except (OSError, ValueError):
            if call is not None and call.closed_by is None:
                call.closed_by = "client"
        finally:
            if call is not None:
                with _open_lock:
                    _open_calls.pop(id(call), None)
            conn.close()
            for done in [*kept, call] if call is not None else kept:
                done.closed_by = done.closed_by or "client"
                done.closed_at = time.monotonic()
                with self._lock:
                    if done.path in self.streamed:
                        self.active -= 1
                    self._changed.notify_all()
                done.closed.set()

    def _serve_one(self, conn: socket.socket, call: Call) -> None:
        path = call.path
        if path in self.streamed:
            _note_open(call)
        with self._lock:
            if path in self.streamed:
                self._check_overlap(call)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            self.calls.append(call)
            self._changed.notify_all()
        if path in self.streamed:
            self._chat(conn, call)
        else:
            self._get(conn, call)

    def _kept_fault(self, conn: socket.socket, call: Call) -> bool:
        """Break a kept connection as ``kept_faults`` says; True when it did."""
        with self._lock:
            fault = self._queued_fault()
            if fault is None:
                return False
            call.kept, call.closed_by = False, f"server ({fault})"
            self.calls.append(call)
            self._changed.notify_all()
        if fault == "half":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
        return True

    def _queued_fault(self) -> str | None:
        return self.kept_faults.popleft() if self.kept_faults else None

    def _next_request(self, conn: socket.socket) -> bool:
        """Wait on a kept connection for its next request: True when one begins, False when the
        client closes it, KEEP_ALIVE_S pass, or the fake shuts down."""
        deadline = time.monotonic() + KEEP_ALIVE_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([conn], [], [], 0.05)
            if readable:
                try:
                    return conn.recv(1, socket.MSG_PEEK) != b""
                except ConnectionError:
                    return False
        return False

    def _check_overlap(self, new: Call) -> None:
        """Record the calls of new's session that were still open beside it (see overlapped())."""
        if self.key is None:
            return
        mine = {id(c) for c in self.calls}
        for old in new.alongside:
            if id(old) in mine and self.key(old.body) == self.key(new.body):
                self.overlaps.append((old, new))

    def _next_script(self, body: dict) -> Script:
        with self._lock:
            if self._queued:
                return self._queued.popleft()
        return self.default(body) if callable(self.default) else self.default

    def _chat(self, conn: socket.socket, call: Call) -> None:
        s = self._next_script(call.body)
        if s.refuse:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # closing with linger 0 sends a reset
        model = fake_wire.Asked(call.body.get("model", ""), call.path)  # the frames differ by route
        self._wait(conn, s.load_delay_s)
        refused = self._refusal(call, s, model)
        if refused is not None:
            return send_json(conn, *refused)
        body = Body(conn, s.framing)
        if s.forever is not None:
            body.head(self.wire.content_type)
            while not self._stop.is_set():
                body.send(s.forever)
                self._wait(conn, 0.001)
            return
        if s.raw is not None:
            body.head(self.wire.content_type, sum(map(len, s.raw)))
            for chunk in s.raw:
                body.send(chunk)
                if self._stop.is_set():
                    return
            return body.end()
        length = None
        if s.framing == "length":  # a second pass: a long answer is never held in memory whole
            length = sum(len(data) for kind, data in self._steps(s, call, model) if kind in ("token", "send"))
        body.head(self.wire.content_type, length)
        for kind, data in self._steps(s, call, model):
            if kind == "stall":
                self._wait(conn, None)
            elif kind == "wait":
                self._wait(conn, data)
            elif kind == "drop":
                return
            else:
                body.send(data)
                call.tokens_sent += kind == "token"
        body.end()

    def _steps(self, s: Script, call: Call, model: str) -> Iterator[tuple[str, object]]:
        """The answer as (what, data): "token" and "send" bytes, "wait", "stall", "drop"."""
        for frame in self.wire.opening(model):
            yield "send", frame
        pieces = self._pieces(s, call.body, model)
        sent = 0
        for i, make in enumerate(pieces):
            if i == s.stall_after:
                yield "stall", None
            if i == s.error_after:
                yield "send", self.wire.error(s.error)
                return
            if i == s.drop_after:
                yield "drop", None
                yield "send", b"x" * 64  # what the Content-Length promised and never came
                return
            if i and s.interval_s:
                yield "wait", s.interval_s
            frames = make()
            yield "token", frames[0]
            for frame in frames[1:]:
                yield "send", frame
            sent += 1
        if s.stall_after is not None and s.stall_after >= len(pieces):
            yield "stall", None
        for frame in self.wire.closing(model, s.done_reason, bool(s.tool_calls), sent):
            yield "send", frame

    def _pieces(self, s: Script, body: dict, model: str) -> Pieces:
        """What streams, each piece framed as it is sent: a script of 100,000 tokens costs the fake
        neither CPU nor memory up front, which a benchmark's Jarvis on the same cores would lose."""
        fmt = self.wire.format(body) if s.json_answer else None
        texts = fake_wire.answer_texts(s.texts(), fmt, len(fake_wire.images_in(body)))
        thinking = [partial(_one, self.wire.thinking, model, text) for text in s.thinking or []]
        tools = [partial(self.wire.tool_calls, model, s.tool_calls)] if s.tool_calls else []
        return Pieces(thinking, texts, partial(_one, self.wire.token, model), tools)

    # Ollama's answers that are not a stream; a fake of another server overrides these
    def _refusal(self, call: Call, s: Script, model: str) -> tuple[int, dict] | None:
        """The (status, JSON body) that answers instead of a stream, if any."""
        if s.status != 200:
            return s.status, {"error": s.error}
        if model.split(":")[0] not in self.models:
            return 404, {"error": f'model "{model}" not found, try pulling it first'}
        error = fake_wire.ollama_refusal(model, fake_wire.lacking(call.body, self.capabilities_of(model)))
        return None if error is None else (400, {"error": error})

    def capabilities_of(self, model: str) -> list[str]:
        """What the model can do, by its name with or without a tag (unnamed models: everything)."""
        caps = self.capabilities
        return list(caps.get(model, caps.get(model.split(":")[0], fake_wire.ALL_CAPABILITIES)))

    def _get(self, conn: socket.socket, call: Call) -> None:
        path = call.path
        if path == "/api/tags":
            models = [{"name": f"{m}:latest", "model": f"{m}:latest", "size": 1} for m in self.models]
            send_json(conn, 200, {"models": models})
        elif path == "/api/show":
            model = call.body.get("model") or call.body.get("name") or ""
            if model.split(":")[0] not in self.models:
                return send_json(conn, 404, {"error": f"model '{model}' not found"})
            send_json(conn, 200, fake_wire.show(self.capabilities_of(model)))
        elif path == "/api/ps":
            send_json(conn, 200, fake_wire.ps(self.models))  # every model it has counts as loaded
        elif path == "/api/version":
            send_json(conn, 200, {"version": "0.0.0-fake"})
        elif path in self.embedding:
            self._embed(conn, call)
        else:
            send_json(conn, 200 if path == "/" else 404, {"status": "Ollama is running"})

    def _embed(self, conn: socket.socket, call: Call) -> None:
        """An embedding, after ``embed_delay_s``, with the connection kept for the next request."""
        self._wait(conn, self.embed_delay_s)
        call.kept = True
        if self.embed_text is None:
            return send_json(conn, *self._embedding(call), keep_alive=True)
        body = self.embed_text.encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )

    def _embedding(self, call: Call) -> tuple[int, dict]:
        return fake_wire.ollama_embed(call.path, call.body, self.models)

    def _wait(self, conn: socket.socket, seconds: float | None) -> None:
        """Sleep ``seconds`` (None: until shutdown) but raise at once if the client leaves."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._stop.is_set():
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                return
            readable, _, _ = select.select([conn], [], [], left)
            if readable:
                try:
                    data = conn.recv(4096)
                except ConnectionError:
                    data = b""
                if not data:
                    raise ClientGone()
        if deadline is None or time.monotonic() < deadline:
            raise ClientGone()  # shutting down: end the call


def overlapped(a: Call, b: Call) -> bool:
    """True when chat calls ``a`` and ``b`` were open at once, both clients still connected.

    Judged by the sockets when each call opened, not by the times the fakes' threads wrote down: a
    loaded machine runs a thread that sees a client leave after the thread that reads the next
    call's request, though the client closed the one before it opened the other.
    """
    return any(c is a for c in b.alongside) or any(c is b for c in a.alongside)


def _note_open(new: Call) -> None:
    """Note the open calls whose clients are still there as new opens (unless new's has left too:
    its request may be read here after a later call's, which says nothing about the order)."""
    with _open_lock:
        if not _client_left(new.sock):
            new.alongside = [c for c in _open_calls.values() if not _client_left(c.sock)]
        _open_calls[id(new)] = new


def _client_left(sock: socket.socket) -> bool:
    """True once the client has closed its side (EOF waits to be read), without blocking."""
    try:
        # select first: a peek on a socket with a timeout would wait it out, under the fake's lock
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True
