"""Streaming HTTP to a model server: one connection per answer, on a socket we own.

A flag checked between chunks is never seen while the model server is silent
(a model loading, a stalled answer): the worker sits in ``connect`` or
``recv``. So the socket is ours (``connect.py``), its shutdown registered on
the stream's ``CancelScope`` before it even connects; ``cancel()`` from
another thread then breaks whatever call the worker blocks in. The standard
library's ``HTTPConnection`` writes the request; ``framing.py`` reads the
response, a receive at a time. ``Response`` reads it and gives its connection
back; its ``Deadlines`` keep the phases and their bounds, and transport
exceptions become ``jarvis.errors`` there and nowhere else.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..cancel import CancelScope
from ..errors import (
    UpstreamDisconnected,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..gil import shutdown
from .connect import open_socket
from .framing import Framing
from .pool import Pool

ERROR_BODY_LIMIT = 65536
USER_AGENT = "Jarvis"  # some hosted APIs and their proxies refuse a request that names no client
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


@dataclass(frozen=True)
class Timeouts:
    """Bounds on one request, in seconds: to connect, to the first text, between texts, in all."""

    connect_s: float
    first_token_s: float
    idle_s: float
    total_s: float
    first_token_named_s: float | None = None  # the timeout a message names, when part was spent before

    @classmethod
    def of(cls, config, first_token_by: float | None = None) -> Timeouts:
        """The config's bounds; ``first_token_by`` (a monotonic time) ends the first-token wait
        sooner when part of it was spent before this request (in a host queue, say)."""
        first_token_s = named_s = config.first_token_timeout_s
        if first_token_by is not None:
            first_token_s = max(0.001, min(first_token_s, first_token_by - time.monotonic()))
        return cls(
            config.connect_timeout_s, first_token_s, config.idle_timeout_s, config.total_timeout_s, named_s
        )


@dataclass(frozen=True)
class Peer:
    """Who is at the other end, for error messages: its name, its URL, how to start it."""

    name: str
    url: str
    hint: str = ""


class Deadlines:
    """Which of a response's bounds applies now, by its phase ("connect", then "first_token", then
    "idle" once text has flowed; the total throughout), and what a transport error in each means."""

    def __init__(self, timeouts: Timeouts):
        self.timeouts = timeouts
        self.phase = "connect"
        self._opened = time.monotonic()
        self._progress = self._opened

    def progress(self) -> bool:
        """Note that text arrived; True when that begins the idle phase."""
        self._progress = time.monotonic()
        if self.phase == "idle":
            return False
        self.phase = "idle"
        return True

    def check(self) -> None:
        now = time.monotonic()
        if now - self._opened > self.timeouts.total_s:  # bytes that never form an answer still end
            raise UpstreamTimeout(
                f"the answer took longer than {self.timeouts.total_s:g} s", code="total_timeout"
            )
        if now - self._progress > self._silence_limit():  # keep-alive comments are not text
            raise self.timeout()

    def _silence_limit(self) -> float:
        return self.timeouts.idle_s if self.phase == "idle" else self.timeouts.first_token_s

    def timeout(self) -> UpstreamTimeout:
        if self.phase == "idle":
            return UpstreamTimeout(
                f"the model was silent for more than {self.timeouts.idle_s:g} s", code="idle_timeout"
            )
        named_s = self.timeouts.first_token_named_s or self.timeouts.first_token_s
        return UpstreamTimeout(f"no answer from the model within {named_s:g} s", code="first_token_timeout")

    def translate(self, e: BaseException, peer: Peer) -> UpstreamError:
        """The one place transport exceptions become Jarvis errors."""
        if _is_timeout(e):
            if self.phase == "connect":
                return UpstreamTimeout(
                    f"{peer.name} at {peer.url} did not accept a connection within "
                    f"{self.timeouts.connect_s:g} s",
                    code="connect_timeout",
                )
            return self.timeout()
        if isinstance(e, ssl.SSLError):  # a certificate refused is not a server that is down
            return UpstreamUnavailable(f"TLS with {peer.name} at {peer.url} failed: {e.reason or e}")
        if self.phase == "connect":
            return UpstreamUnavailable(f"{peer.name} is not reachable at {peer.url}. {peer.hint}".strip())
        return UpstreamDisconnected(f"the connection to {peer.name} broke: {type(e).__name__}")


class Response:
    """One streamed response; the worker reads it, any thread may cancel it."""

    def __init__(self, cancel: CancelScope, timeouts: Timeouts, peer: Peer, pool: Pool | None = None):
        self.cancel = cancel
        self.timeouts = timeouts
        self.peer = peer
        self.pool = pool  # where the connection comes from and goes back to (an embedding's), or None
        self._framing: Framing | None = None
        self.deadlines = Deadlines(timeouts)
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self._sock: socket.socket | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._body: Iterator[bytes] | None = None  # None: cancelled before a response came
        self._undo: list = []

    def progress(self) -> None:
        """Note that text arrived: from now on the idle timeout applies, not the first-token one."""
        # a body that ended with this read has closed its socket
        if self.deadlines.progress() and self._sock.fileno() >= 0:
            self._sock.settimeout(self.timeouts.idle_s)

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives, what one receive brings at a time, within the deadlines."""
        if self._body is None:
            return
        self.deadlines.check()
        for data in self._body:
            yield data
            self.deadlines.check()

    def line_groups(self, max_line: int) -> Iterator[list[bytes]]:
        """The body's lines as they arrive, a list per receive (a fast server sends many at a
        time, and one call per line cost more than parsing them); stop quietly once cancelled."""
        pending = b""
        for data in self.chunks():
            if b"\n" in data:
                block = pending + data
                lines = block.split(b"\n")
                pending = lines.pop()
                yield [line.rstrip(b"\r") for line in lines] if b"\r" in block else lines
            else:
                pending += data
            if len(pending) > max_line:
                raise UpstreamProtocolError(f"{self.peer.name} sent a line longer than {max_line} bytes")
            if self.cancel.cancelled:  # checkpoint: between receives
                return
        if pending.strip():  # a close-delimited body may end without a newline
            yield [pending.rstrip(b"\r")]

    def body(self, limit: int = ERROR_BODY_LIMIT) -> bytes:
        """Up to ``limit`` bytes of a short body (an error, a JSON answer)."""
        data = b""
        for more in self.chunks():
            data += more
            if len(data) >= limit:
                break
        return data[:limit]

    def error_detail(self) -> str:
        """The server's own words for an HTTP error, best effort and short."""
        try:
            body = self.body()
        except UpstreamError:
            return "(no detail)"
        try:
            found = json.loads(body)
        except ValueError:
            found = None
        if isinstance(found, dict) and found.get("error"):
            error = found["error"]
            return str(error.get("message") or error) if isinstance(error, dict) else str(error)
        return body[:200].decode("utf-8", "replace").strip() or "(no detail)"

    def _open(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        send = (parts.hostname, port, method, target, body, {"User-Agent": USER_AGENT, **headers})
        kept = self.pool.take() if self.pool is not None else None
        if kept is not None:
            self._undo.append(self.cancel.on_cancel(lambda: shutdown(kept)))
            try:
                return self._exchange(kept, *send)
            except TRANSPORT_ERRORS:
                if self._framing.answered or self.cancel.cancelled:
                    raise  # part of an answer came: the request may have run, so it is not sent again
                # the server closed the kept connection before it answered: once more, on a new one
                self._let_go(reusable=False)
        self.deadlines.phase = "connect"
        sock = open_socket(parts.hostname, port, tls, self.timeouts.connect_s, self.cancel, self._undo)
        if self.pool is not None:
            self.pool.lend(sock)
        self._exchange(sock, *send)

    def _exchange(self, sock, host: str, port: int, method: str, target: str, body, headers) -> None:
        """Send the request on ``sock`` (connected) and read the answer's head."""
        self._sock = sock
        self._framing = Framing(sock.recv)
        self.deadlines.phase = "first_token"  # connected: a failure from now on is not "unreachable"
        sock.settimeout(self.timeouts.first_token_s)
        self._conn = http.client.HTTPConnection(host, port)
        self._conn.sock = sock  # it writes the request on our socket; we read the answer
        self._conn.request(method, target, body=body, headers=headers)
        self.status, self.headers = self._framing.head()
        self._body = self._framing.body(self.status, self.headers)

    def _let_go(self, reusable: bool) -> None:
        """Unregister the cancel's closers, then close the connection or give it back to the pool."""
        for undo in self._undo:
            undo()
        self._undo = []
        if self._conn is not None:
            self._conn.sock = None  # ours to close or keep, not the writer's
            self._conn.close()
            self._conn = None
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self.pool is not None:
            framing = self._framing
            # the cancel read after the undos: a cancel by then has shut it down
            kept = (
                reusable
                and framing is not None
                and framing.reusable(self.headers)
                and not self.cancel.cancelled
            )
            self.pool.give(sock, kept)
        else:
            sock.close()

    def _close(self) -> None:
        self._let_go(reusable=True)


@contextmanager
def request(
    method: str,
    url: str,
    *,
    cancel: CancelScope,
    timeouts: Timeouts,
    peer: Peer,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    pool: Pool | None = None,
) -> Iterator[Response]:
    """Open ``url`` and yield its response, cancellable at every step; closes it on exit, or
    with a ``pool`` gives it back there when its answer was read to the end.

    An error after ``cancel`` is the close we caused, not a failure: the block
    then ends quietly and the caller sees ``cancel.cancelled``.
    """
    response = Response(cancel, timeouts, peer, pool)
    try:
        try:
            response._open(method, url, body, headers or {})
        except TRANSPORT_ERRORS as e:
            if not cancel.cancelled:
                raise response.deadlines.translate(e, peer) from e
            # cancelled while opening: the response has nothing to read
        yield response
    except UpstreamError:
        if not cancel.cancelled:
            raise
    except TRANSPORT_ERRORS as e:
        if not cancel.cancelled:  # an error we caused by closing is no error
            raise response.deadlines.translate(e, peer) from e
    finally:
        response._close()


def get_json(
    url: str,
    *,
    timeouts: Timeouts,
    peer: Peer,
    headers: Mapping[str, str] | None = None,
    on_error=None,
    post: dict | None = None,
):
    """GET a small JSON document (or POST ``post`` for it); anything but a 200 with JSON raises an
    ``UpstreamError``. ``on_error(response)`` may name the error for a status (a refused key, say).
    """
    method, body = ("GET", None) if post is None else ("POST", json.dumps(post).encode())
    if post is not None:
        headers = {"Content-Type": "application/json", **(headers or {})}
    cancel = CancelScope()
    with request(method, url, cancel=cancel, timeouts=timeouts, peer=peer, headers=headers, body=body) as r:
        if r.status != 200:
            if on_error is not None:
                raise on_error(r)
            raise UpstreamHTTPError(
                f"{peer.name} answered HTTP {r.status} to {urlsplit(url).path}: {r.error_detail()}"
            )
        try:
            return json.loads(r.body(limit=8 * 1024 * 1024))
        except ValueError:
            raise UpstreamProtocolError(f"{peer.name} sent something that is not JSON for {url}") from None


_scan = json.JSONDecoder().scan_once
_JSON_SPACE = " \t\r\n"


def parse_json(data: bytes):
    """One JSON value (a line, an event's data), as ``json.loads`` reads it but for UTF-8 alone:
    straight to the decoder, without ``loads``'s per-call detours, which cost more than the
    parse of a small event. Raises ``ValueError``."""
    text = data.decode().strip(_JSON_SPACE)
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("more than one JSON value")
    return value


def _is_timeout(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, TimeoutError):
            return True
        e = e.__cause__ or e.__context__
    return False
