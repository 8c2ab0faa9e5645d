"""Streaming HTTP to a model server: one urllib3 connection per answer.

A flag checked between chunks is never seen while the model server is silent
(a model loading, a stalled answer): the worker sits in ``connect`` or
``recv``. So we open the socket ourselves, register its shutdown on the
stream's ``CancelScope`` before it even connects, and hand it to urllib3's
public ``HTTPConnection``; ``cancel()`` from another thread then breaks
whatever call the worker blocks in. Reads return what each receive returns
(``read1``), so a ``Content-Length`` or close-delimited body streams exactly
like a chunked one. Transport exceptions become ``jarvis.errors`` here and
nowhere else.
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

import urllib3
from urllib3.connection import HTTPConnection

from ..cancel import CancelScope
from ..errors import (
    UpstreamDisconnected,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

READ_SIZE = 65536  # an upper bound per read; read1 returns whatever one receive brings
ERROR_BODY_LIMIT = 65536
TRANSPORT_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError)


@dataclass(frozen=True)
class Timeouts:
    """Bounds on one request, in seconds: to connect, to the first text, between texts, in all."""

    connect_s: float
    first_token_s: float
    idle_s: float
    total_s: float

    @classmethod
    def of(cls, config) -> Timeouts:
        return cls(
            config.connect_timeout_s,
            config.first_token_timeout_s,
            config.idle_timeout_s,
            config.total_timeout_s,
        )


@dataclass(frozen=True)
class Peer:
    """Who is at the other end, for error messages: its name, its URL, how to start it."""

    name: str
    url: str
    hint: str = ""


class Response:
    """One streamed response; the worker reads it, any thread may cancel it."""

    def __init__(self, cancel: CancelScope, timeouts: Timeouts, peer: Peer):
        self.cancel = cancel
        self.timeouts = timeouts
        self.peer = peer
        self.phase = "connect"  # then "first_token", then "idle" once text has flowed
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self._sock: socket.socket | None = None
        self._conn: HTTPConnection | None = None
        self._raw: urllib3.BaseHTTPResponse | None = None  # None: cancelled before a response came
        self._undo: list = []
        self._opened = time.monotonic()
        self._progress = self._opened

    def progress(self) -> None:
        """Note that text arrived: from now on the idle timeout applies, not the first-token one."""
        self._progress = time.monotonic()
        if self.phase != "idle":
            self.phase = "idle"
            if self._sock.fileno() >= 0:  # a body that ended with this read has closed it
                self._sock.settimeout(self.timeouts.idle_s)

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives, one receive (or one HTTP chunk) at a time, within the deadlines."""
        if self._raw is None:
            return
        raw = self._raw
        # read_chunked yields each chunk whole, without read1's per-call buffering; other bodies
        # get read1, which returns what one receive brings and never waits to fill a buffer
        source = (
            raw.read_chunked(decode_content=False) if raw.chunked else iter(lambda: raw.read1(READ_SIZE), b"")
        )
        self._check_deadlines()
        for data in source:
            yield data
            self._check_deadlines()

    def lines(self, max_line: int) -> Iterator[bytes]:
        """Yield the body's lines as they arrive; stop quietly once cancelled."""
        pending = b""
        for data in self.chunks():
            pending += data
            if b"\n" in data:
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line.rstrip(b"\r")
            if len(pending) > max_line:
                raise UpstreamProtocolError(f"{self.peer.name} sent a line longer than {max_line} bytes")
            if self.cancel.cancelled:  # checkpoint: between receives
                return
        if pending.strip():  # a close-delimited body may end without a newline
            yield pending

    def body(self, limit: int = ERROR_BODY_LIMIT) -> bytes:
        """Up to ``limit`` bytes of a short body (an error, a JSON answer)."""
        data = b""
        for more in self.chunks():
            data += more
            if len(data) >= limit:
                break
        return data[:limit]

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        if now - self._opened > self.timeouts.total_s:  # bytes that never form an answer still end
            raise UpstreamTimeout(
                f"the answer took longer than {self.timeouts.total_s:g} s", code="total_timeout"
            )
        if now - self._progress > self._silence_limit():  # keep-alive comments are not text
            raise self._timeout()

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

    def _silence_limit(self) -> float:
        return self.timeouts.idle_s if self.phase == "idle" else self.timeouts.first_token_s

    def _timeout(self) -> UpstreamTimeout:
        if self.phase == "idle":
            return UpstreamTimeout(
                f"the model was silent for more than {self.timeouts.idle_s:g} s", code="idle_timeout"
            )
        return UpstreamTimeout(
            f"no answer from the model within {self.timeouts.first_token_s:g} s", code="first_token_timeout"
        )

    def _open(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        self._sock = _connect(parts.hostname, port, self.timeouts.connect_s, self.cancel, self._undo)
        if tls:
            context = ssl.create_default_context()
            self._sock = context.wrap_socket(
                self._sock, server_hostname=parts.hostname, do_handshake_on_connect=False
            )
            # the TLS socket takes over the descriptor: register it before the handshake blocks
            self._undo.append(self.cancel.on_cancel(lambda sock=self._sock: _shutdown(sock)))
            self._sock.do_handshake()
        self.phase = "first_token"  # connected: a failure from now on is not "unreachable"
        self._conn = HTTPConnection(parts.hostname, port, timeout=self.timeouts.first_token_s)
        self._conn.sock = self._sock
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._conn.request(method, target, body=body, headers=dict(headers), preload_content=False)
        raw = self._conn.getresponse()
        self._raw = raw
        self.status = raw.status
        self.headers = raw.headers

    def _close(self) -> None:
        for undo in self._undo:
            undo()
        if self._raw is not None:
            self._raw.close()
        if self._conn is not None:
            self._conn.close()
        if self._sock is not None:
            self._sock.close()

    def _translate(self, e: BaseException) -> UpstreamError:
        """The one place transport exceptions become Jarvis errors."""
        if _is_timeout(e):
            if self.phase == "connect":
                return UpstreamTimeout(
                    f"{self.peer.name} at {self.peer.url} did not accept a connection within "
                    f"{self.timeouts.connect_s:g} s",
                    code="connect_timeout",
                )
            return self._timeout()
        if isinstance(e, ssl.SSLError):  # a certificate refused is not a server that is down
            return UpstreamUnavailable(
                f"TLS with {self.peer.name} at {self.peer.url} failed: {e.reason or e}"
            )
        if self.phase == "connect":
            return UpstreamUnavailable(
                f"{self.peer.name} is not reachable at {self.peer.url}. {self.peer.hint}".strip()
            )
        return UpstreamDisconnected(f"the connection to {self.peer.name} broke: {type(e).__name__}")


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
) -> Iterator[Response]:
    """Open ``url`` and yield its response, cancellable at every step; closes it on exit.

    An error after ``cancel`` is the close we caused, not a failure: the block
    then ends quietly and the caller sees ``cancel.cancelled``.
    """
    response = Response(cancel, timeouts, peer)
    try:
        try:
            response._open(method, url, body, headers or {})
        except TRANSPORT_ERRORS as e:
            if not cancel.cancelled:
                raise response._translate(e) from e
            # cancelled while opening: the response has nothing to read
        yield response
    except UpstreamError:
        if not cancel.cancelled:
            raise
    except TRANSPORT_ERRORS as e:
        if not cancel.cancelled:  # an error we caused by closing is no error
            raise response._translate(e) from e
    finally:
        response._close()


def get_json(
    url: str, *, timeouts: Timeouts, peer: Peer, headers: Mapping[str, str] | None = None, on_error=None
):
    """GET a small JSON document; anything but a 200 with JSON raises an ``UpstreamError``.

    ``on_error(response)`` may name the error for a status (a refused key, say).
    """
    with request("GET", url, cancel=CancelScope(), timeouts=timeouts, peer=peer, headers=headers) as r:
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


def _connect(host: str, port: int, timeout: float, cancel: CancelScope, undo: list) -> socket.socket:
    """A connected socket whose shutdown is registered on ``cancel`` before it connects."""
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        # shutdown wakes a blocked connect as well as a blocked recv
        undo.append(cancel.on_cancel(lambda sock=sock: _shutdown(sock)))
        if cancel.cancelled:  # checkpoint: before each connect (a shutdown before it does nothing)
            sock.close()
            raise ConnectionAbortedError("cancelled before connecting")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the worker: nothing left to break


def _is_timeout(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, (TimeoutError, urllib3.exceptions.TimeoutError)):
            return True
        e = e.__cause__ or e.__context__
    return False
