"""HTTP/1.1 response framing over a receive callable: the head, then the body as it arrives.

Each receive is decoded whole (chunked, ``Content-Length`` or close-delimited
alike), so the many small chunks a fast model server sends come out as one
block, not one read call each. A library was measured for this job (h11,
docs/benchmarks.md, "Framing the upstream's HTTP"): it costs eight times the
CPU per token of this loop, so the loop stays. Errors are ``http.client``'s;
``http.Deadlines`` turns them into Jarvis errors.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator

READ_SIZE = 8192  # an upper bound per receive (each waiting receive holds a buffer this size)
HEAD_LIMIT = 65536  # the status line and headers
CHUNK_LINE_LIMIT = 1024  # a chunk's size line, extensions included


class Framing:
    """One response read from ``recv`` (a socket's, so a shutdown from another thread ends it)."""

    def __init__(self, recv: Callable[[int], bytes]):
        self._recv = recv
        self._buffer = b""  # received, not yet parsed
        self.answered = False  # a byte of the head arrived: a request sent again could run twice
        self.version = b""  # the status line's, HTTP/1.1 say
        # the body ended where its framing said, nothing after it: the connection may carry another
        self.finished = False

    def reusable(self, headers: dict[str, str]) -> bool:
        """Whether the connection may carry another request: its answer read to the end its
        framing named, nothing after it, HTTP/1.1 and not closing."""
        return (
            self.finished
            and self.version == b"HTTP/1.1"
            and "close" not in headers.get("connection", "").lower()
        )

    def head(self) -> tuple[int, dict[str, str]]:
        """The status and headers (names in lower case) of the final response."""
        while True:
            head = self._until_blank_line().split(b"\n")
            status_line = head[0].rstrip(b"\r")
            version, _, rest = status_line.partition(b" ")
            code = rest[:3]
            if not (version.startswith(b"HTTP/") and len(code) == 3 and code.isdigit()):
                raise http.client.BadStatusLine(repr(status_line[:100]))
            if not 100 <= int(code) < 200:  # an interim answer (100 Continue) comes before the real one
                self.version = version
                return int(code), _headers(head[1:])

    def body(self, status: int, headers: dict[str, str]) -> Iterator[bytes]:
        """The body's bytes, by the framing the headers name (RFC 9112, section 6.3)."""
        if status in (204, 304):
            self.finished = not self._buffer
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
            more = self._recv(READ_SIZE)
            if not more:
                if buf:
                    raise http.client.IncompleteRead(buf)
                raise http.client.RemoteDisconnected("the server closed the connection without answering")
            self.answered = True
            buf += more

    def _until_close(self) -> Iterator[bytes]:
        data, self._buffer = self._buffer, b""
        if data:
            yield data
        while data := self._recv(READ_SIZE):
            yield data

    def _sized(self, length: int) -> Iterator[bytes]:
        data, extra, self._buffer = self._buffer[:length], self._buffer[length:], b""
        left = length
        while True:
            if data:
                left -= len(data)
                yield data
            if left <= 0:
                self.finished = not extra
                return
            data = self._recv(min(left, READ_SIZE))
            if not data:
                raise http.client.IncompleteRead(b"", left)

    def _chunked(self) -> Iterator[bytes]:
        """The chunked body, decoded a receive at a time: what one receive brings, in one block."""
        buf, pos, self._buffer = self._buffer, 0, b""
        left = 0  # bytes of the current chunk yet to come, its closing CRLF included; -1 after the last
        while True:
            out, pos, left = _dechunk(buf, pos, left)
            if data := b"".join(out):
                yield data
            if left < 0:  # the last chunk: what follows are trailers (none, for a kept connection)
                self.finished = buf[pos:] == b"\r\n"
                return
            more = self._recv(READ_SIZE)
            if not more:
                raise http.client.IncompleteRead(b"", left or None)
            buf = buf[pos:] + more
            pos = 0


def _dechunk(buf: bytes, pos: int, left: int) -> tuple[list[bytes], int, int]:
    """The chunk data in ``buf`` from ``pos``, given ``left`` bytes of the current chunk still to
    come; returns the data, where the next receive continues and what it leaves (-1: the body ended)."""
    out = []
    while True:
        if left:
            end = min(len(buf), pos + left)
            if left > 2:  # not only the CRLF is left: take the data
                out.append(buf[pos : min(end, pos + left - 2)])
            left -= end - pos
            pos = end
            if left:
                return out, pos, left  # the rest of this chunk is still on its way
        eol = buf.find(b"\n", pos)
        if eol < 0:
            if len(buf) - pos > CHUNK_LINE_LIMIT:
                raise http.client.LineTooLong("chunk size")
            return out, pos, 0
        try:
            size = int(buf[pos:eol], 16)  # int() ignores the surrounding whitespace and CR
        except ValueError:
            size = _chunk_size(buf[pos:eol])
        pos = eol + 1
        if size <= 0:
            return out, pos, _last_chunk(size)
        left = size + 2


def _headers(lines: list[bytes]) -> dict[str, str]:
    """Header lines as a dict, names in lower case, repeated fields joined with commas."""
    headers: dict[str, str] = {}
    name = ""
    for line in lines:
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t") and name:  # an obsolete folded continuation
            headers[name] += " " + line.strip().decode("latin-1")
            continue
        field, colon, value = line.partition(b":")
        if not colon:
            continue
        name, text = field.strip().decode("latin-1").lower(), value.strip().decode("latin-1")
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    return headers


def _chunk_size(line: bytes) -> int:
    """A chunk size with extensions (``1a;name=value``); anything else is a broken body."""
    try:
        return int(line.split(b";", 1)[0], 16)
    except ValueError:
        raise http.client.IncompleteRead(b"", None) from None  # the connection broke mid-body


def _last_chunk(size: int) -> int:
    """-1 for the last chunk (size 0); a negative size is a broken body."""
    if size:
        raise http.client.IncompleteRead(b"", None)
    return -1
