"""Streaming HTTP to a model server: one connection per answer, on a socket we own.

A flag checked between chunks is never seen while the model server is silent
(a model loading, a stalled answer): the worker sits in ``connect`` or
``recv``. So we open the socket ourselves and register its shutdown on the
stream's ``CancelScope`` before it even connects; ``cancel()`` from another
thread then breaks whatever call the worker blocks in. The standard
library's ``HTTPConnection`` writes the request; the response is read here,
from one buffer: each receive is decoded whole (chunked, ``Content-Length``
or close-delimited alike), so the many small chunks a fast model server sends
come out as one block, not one read call each. Transport exceptions become
``jarvis.errors`` here and nowhere else.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import threading
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

READ_SIZE = 8192  # an upper bound per receive (each waiting receive holds a buffer this size)
HEAD_LIMIT = 65536  # the status line and headers
CHUNK_LINE_LIMIT = 1024  # a chunk's size line, extensions included
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
        self._conn: http.client.HTTPConnection | None = None
        self._body: Iterator[bytes] | None = None  # None: cancelled before a response came
        self._buffer = b""  # received, not yet parsed
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
        """The body as it arrives, what one receive brings at a time, within the deadlines."""
        if self._body is None:
            return
        self._check_deadlines()
        for data in self._body:
            yield data
            self._check_deadlines()

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
        named_s = self.timeouts.first_token_named_s or self.timeouts.first_token_s
        return UpstreamTimeout(f"no answer from the model within {named_s:g} s", code="first_token_timeout")

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
        self._sock.settimeout(self.timeouts.first_token_s)
        self._conn = http.client.HTTPConnection(parts.hostname, port)
        self._conn.sock = self._sock  # it writes the request on our socket; we read the answer
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._conn.request(method, target, body=body, headers={"User-Agent": USER_AGENT, **headers})
        self.status, self.headers = self._read_head()
        self._body = self._framed_body()

    def _read_head(self) -> tuple[int, dict[str, str]]:
        """The status and headers (names in lower case) of the final response."""
        while True:
            head = self._until_blank_line().split(b"\n")
            status_line = head[0].rstrip(b"\r")
            version, _, rest = status_line.partition(b" ")
            code = rest[:3]
            if not (version.startswith(b"HTTP/") and len(code) == 3 and code.isdigit()):
                raise http.client.BadStatusLine(repr(status_line[:100]))
            if not 100 <= int(code) < 200:  # an interim answer (100 Continue) comes before the real one
                break
        headers: dict[str, str] = {}
        name = ""
        for line in head[1:]:
            line = line.rstrip(b"\r")
            if line[:1] in (b" ", b"\t") and name:  # an obsolete folded continuation
                headers[name] += " " + line.strip().decode("latin-1")
                continue
            field, colon, value = line.partition(b":")
            if not colon:
                continue
            name, text = field.strip().decode("latin-1").lower(), value.strip().decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        return int(code), headers

    def _until_blank_line(self) -> bytes:
        buf = self._buffer
        while True:
            ends = [(i, n) for i, n in ((buf.find(b"\r\n\r\n"), 4), (buf.find(b"\n\n"), 2)) if i >= 0]
            if ends:
                end, size = min(ends)
                self._buffer = buf[end + size :]
                return buf[:end]
            if len(buf) > HEAD_LIMIT:
                raise http.client.LineTooLong("response headers")
            more = self._sock.recv(READ_SIZE)
            if not more:
                if buf:
                    raise http.client.IncompleteRead(buf)
                raise http.client.RemoteDisconnected("the server closed the connection without answering")
            buf += more

    def _framed_body(self) -> Iterator[bytes]:
        """The body's bytes, by the framing the headers name (RFC 9112, section 6.3)."""
        headers = self.headers
        if self.status in (204, 304):
            return iter(())
        coding = headers.get("transfer-encoding")
        if coding is not None:  # chunked when it is the last coding; any other ends with the connection
            chunked = coding.rsplit(",", 1)[-1].strip().lower() == "chunked"
            return self._chunked() if chunked else self._until_close()
        if "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise http.client.HTTPException(f"an invalid Content-Length: {length[:40]!r}")
            return self._sized(int(length))
        return self._until_close()

    def _until_close(self) -> Iterator[bytes]:
        data, self._buffer = self._buffer, b""
        if data:
            yield data
        while data := self._sock.recv(READ_SIZE):
            yield data

    def _sized(self, length: int) -> Iterator[bytes]:
        data, self._buffer = self._buffer[:length], b""
        left = length
        while True:
            if data:
                left -= len(data)
                yield data
            if left <= 0:
                return
            data = self._sock.recv(min(left, READ_SIZE))
            if not data:
                raise http.client.IncompleteRead(b"", left)

    def _chunked(self) -> Iterator[bytes]:
        """The chunked body, decoded a receive at a time: what one receive brings, in one block."""
        buf, pos, self._buffer = self._buffer, 0, b""
        left = 0  # bytes of the current chunk yet to come, its closing CRLF included
        while True:
            out = []
            while True:
                if left:
                    end = min(len(buf), pos + left)
                    if left > 2:  # not only the CRLF is left: take the data
                        out.append(buf[pos : min(end, pos + left - 2)])
                    left -= end - pos
                    pos = end
                    if left:
                        break  # the rest of this chunk is still on its way
                eol = buf.find(b"\n", pos)
                if eol < 0:
                    if len(buf) - pos > CHUNK_LINE_LIMIT:
                        raise http.client.LineTooLong("chunk size")
                    break
                try:
                    size = int(buf[pos:eol], 16)  # int() ignores the surrounding whitespace and CR
                except ValueError:
                    size = _chunk_size(buf[pos:eol])
                pos = eol + 1
                if size <= 0:  # the last chunk: what follows are trailers, and we close
                    if size:
                        raise http.client.IncompleteRead(b"", None)  # a negative size: a broken body
                    if data := b"".join(out):
                        yield data
                    return
                left = size + 2
            if data := b"".join(out):
                yield data
            more = self._sock.recv(READ_SIZE)
            if not more:
                raise http.client.IncompleteRead(b"", left or None)
            buf = buf[pos:] + more
            pos = 0

    def _close(self) -> None:
        for undo in self._undo:
            undo()
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


def _connect(host: str, port: int, timeout: float, cancel: CancelScope, undo: list) -> socket.socket:
    """A connected socket whose shutdown is registered on ``cancel`` before it connects; the
    name lookup and every connect attempt share one deadline of ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in _resolve(host, port, deadline, cancel):
        sock = socket.socket(family, kind, proto)
        # shutdown wakes a blocked connect as well as a blocked recv
        undo.append(cancel.on_cancel(lambda sock=sock: _shutdown(sock)))
        if cancel.cancelled:  # checkpoint: before each connect (a shutdown before it does nothing)
            sock.close()
            raise ConnectionAbortedError("cancelled before connecting")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no connection to {host} within {timeout:g} s")
            sock.settimeout(left)
            sock.connect(address)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error


def _resolve(host: str, port: int, deadline: float, cancel: CancelScope) -> list:
    """``host``'s addresses, by ``deadline`` and abandoned at once on cancel.

    A lookup cannot be interrupted (the C resolver blocks its thread), so a name is
    looked up in a thread of its own that we stop waiting for; an address needs no lookup."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass  # a name: look it up below
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    found: list = []
    done = threading.Event()

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            found.append(e)
        finally:
            done.set()

    # a daemon: a hung resolver must not hold the process at exit; it ends when the lookup does
    threading.Thread(target=lookup, name=f"jarvis-resolve-{host}", daemon=True).start()
    undo = cancel.on_cancel(done.set)
    try:
        done.wait(max(0.0, deadline - time.monotonic()))
    finally:
        undo()
    if cancel.cancelled:  # checkpoint: cancelled while the name was looked up
        raise ConnectionAbortedError("cancelled while looking up the name")
    if not found:
        raise TimeoutError(f"looking up {host} took longer than the connect timeout")
    if isinstance(found[0], OSError):
        raise found[0]
    return found[0]


def _chunk_size(line: bytes) -> int:
    """A chunk size with extensions (``1a;name=value``); anything else is a broken body."""
    try:
        return int(line.split(b";", 1)[0], 16)
    except ValueError:
        raise http.client.IncompleteRead(b"", None) from None  # the connection broke mid-body


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the worker: nothing left to break


def _is_timeout(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, TimeoutError):
            return True
        e = e.__cause__ or e.__context__
    return False
