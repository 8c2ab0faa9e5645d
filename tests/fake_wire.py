"""What the fakes put on the wire: HTTP framing and Ollama's lines.

The fake servers (tests/fake_ollama.py, tests/fake_openai.py) own the threads and the waits; this
module holds the parts they share: reading a request, framing a response, the shapes of Ollama's
NDJSON lines.
"""

from __future__ import annotations

import json
import socket


class ClientGone(Exception):
    """The client closed its side before the fake had read or answered the request."""


# Ollama's shapes


def message(model: str, text: str, *, done: bool) -> dict:
    """One line of Ollama's /api/chat stream."""
    return {
        "model": model,
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": text},
        "done": done,
    }


def line(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# HTTP


class Body:
    """Writes a response body framed as chunks, with a Content-Length, or ended by closing."""

    def __init__(self, conn: socket.socket, framing: str):
        assert framing in ("chunked", "length", "close"), framing
        self.conn = conn
        self.framing = framing

    def head(self, content_type: bytes, length: int | None = None) -> None:
        if self.framing == "chunked":
            framing = b"Transfer-Encoding: chunked\r\n"
        elif self.framing == "length" and length is not None:
            framing = b"Content-Length: %d\r\n" % length
        else:
            framing = b""  # the body ends when the connection closes
        self.conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n%sConnection: close\r\n\r\n" % (content_type, framing)
        )

    def send(self, data: bytes) -> None:
        # one sendall per frame: the bench stamps each as it leaves
        self.conn.sendall(b"%x\r\n%s\r\n" % (len(data), data) if self.framing == "chunked" else data)

    def end(self) -> None:
        if self.framing == "chunked":
            self.conn.sendall(b"0\r\n\r\n")


def send_json(conn: socket.socket, status: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    conn.sendall(
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, len(body), body)
    )


def read_request(conn: socket.socket) -> tuple[str, dict, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            raise ClientGone()
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for header in lines[1:]:
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            raise ClientGone()
        body += more
    return path, headers, json.loads(body) if body else {}
