"""Framing an upstream's chunked body: Jarvis's loop (upstream/framing.py) against h11, in one process.

``python -m bench.framing [TOKENS [PER_RECV]]``: one chunked body of one small chunk (an Ollama
line) per token, fed from memory as receives of 8192 bytes (PER_RECV 0) or of PER_RECV chunks each;
prints MB/s of body and CPU µs per token, best of three. h11 is not a dependency of Jarvis: the
comparison runs where it is installed (docs/benchmarks.md, "Framing the upstream's HTTP")."""

import json
import sys
import time

import h11

from jarvis.upstream.framing import Framing

TOKENS = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
PER_RECV = (
    int(sys.argv[2]) if len(sys.argv) > 2 else 0
)  # 0: pack receives to 8192 bytes; N: N tokens per receive


def body_chunks():
    line = (
        json.dumps(
            {
                "model": "m",
                "created_at": "2024-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": "tok "},
                "done": False,
            }
        ).encode()
        + b"\n"
    )
    chunk = b"%x\r\n" % len(line) + line + b"\r\n"
    return line, chunk


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


def receives():
    line, chunk = body_chunks()
    stream = HEAD + chunk * TOKENS + b"0\r\n\r\n"
    out = []
    if PER_RECV:
        step = len(chunk) * PER_RECV
        out.append(HEAD)
        body = stream[len(HEAD) :]
        out += [body[i : i + step] for i in range(0, len(body), step)]
    else:
        out = [stream[i : i + 8192] for i in range(0, len(stream), 8192)]
    return out, len(line) * TOKENS


class FakeSock:
    def __init__(self, recvs):
        self.it = iter(recvs)

    def recv(self, n):
        return next(self.it, b"")

    def fileno(self):
        return 3

    def settimeout(self, t):
        pass


def framing(recvs):
    f = Framing(FakeSock(recvs).recv)
    status, headers = f.head()
    n = 0
    for data in f.body(status, headers):
        n += len(data)
    return n


def _h11_posted() -> h11.Connection:
    """An h11 client connection whose request (a POST as Jarvis sends) has gone out: next, the response."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(method="POST", target="/api/chat", headers=[("Host", "x"), ("Content-Length", "0")])
    )
    conn.send(h11.EndOfMessage())
    return conn


def with_h11(recvs):
    sock, conn = FakeSock(recvs), _h11_posted()
    n = 0
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(sock.recv(8192))
            continue
        if isinstance(ev, h11.Response):
            continue
        if isinstance(ev, h11.Data):
            n += len(ev.data)
            continue
        if isinstance(ev, h11.EndOfMessage):
            return n
        raise RuntimeError(ev)


def with_h11_blocks(recvs):
    """h11 yielding what one receive brings as one block (join the Data events between receives)."""
    sock, conn = FakeSock(recvs), _h11_posted()
    n = 0
    out = []
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            if out:
                n += len(b"".join(out))
                out = []
            conn.receive_data(sock.recv(8192))
            continue
        if type(ev) is h11.Data:
            out.append(ev.data)
            continue
        if isinstance(ev, h11.Response):
            continue
        if isinstance(ev, h11.EndOfMessage):
            return n + len(b"".join(out))
        raise RuntimeError(ev)


recvs, expect = receives()
for name, fn in (("jarvis", framing), ("h11", with_h11), ("h11-blocks", with_h11_blocks)):
    best = None
    for _ in range(3):
        c0, w0 = time.process_time(), time.perf_counter()
        got = fn(recvs)
        c1, w1 = time.process_time(), time.perf_counter()
        assert got == expect, (name, got, expect)
        if best is None or c1 - c0 < best[0]:
            best = (c1 - c0, w1 - w0)
    cpu, wall = best
    print(
        f"{name:11s} tokens={TOKENS} per_recv={PER_RECV or 'packed'} MB/s={expect / wall / 1e6:8.1f} "
        f"cpu_us_per_token={cpu / TOKENS * 1e6:6.3f}"
    )
