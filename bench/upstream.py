"""The scripted upstream: the tests' fake Ollama in its own process, steered by the prompts.

It runs as a separate process (``python -m bench.upstream``) so that its
threads never compete with the measuring client for one GIL: client, server
and upstream each get their own interpreter, as in a real deployment. The
fake's records use ``time.monotonic``, which is one clock for every process
on Linux, so its open and close times compare directly with the client's.

Each prompt carries its own script (``directive``), so concurrent streams can
behave differently without any ordering between them. The parent talks to
the process over stdin/stdout, one JSON object per line.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from functools import partial

MARK = "bench:"
PROMPT = "Count slowly from 1 to 100000, one number per word. "  # what a real model is asked
SCRIPT_FIELDS = ("tokens", "interval_s", "load_delay_s", "stall_after", "error_after", "drop_after", "status")
# counts a directive may give, expanded by the fake so the prompt stays short: "thinking": n chunks
# "thk0 ", "thk1 "... before the text; "calls": n tool calls fn0(i=0), fn1(i=1)... after it;
# "tool": one tool call {"name", "arguments"} as given (a call that has a tool result last has no
# directive: the agent's next model call gets the default eight tokens of text)
THINKING = "thk{} "
CALL = "fn{}"


def thinking_chunks(count: int) -> list[str]:
    return [THINKING.format(i) for i in range(count)]


def tool_calls(count: int) -> list[dict]:
    return [{"name": CALL.format(i), "arguments": {"i": i}} for i in range(count)]


def directive(tag: str, **script) -> str:
    """A prompt that a real model answers at length and the bench fake follows exactly."""
    return PROMPT + MARK + json.dumps({"tag": tag, **script}, separators=(",", ":"))


def parse_directive(prompt: str) -> dict | None:
    head, mark, tail = prompt.rpartition(MARK)
    if not mark:
        return None
    try:
        found = json.loads(tail)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


class Fake:
    """The parent's handle on the upstream process; every call is bounded."""

    def __init__(self, cwd: str, log_path: str, timeout: float = 10.0, kind: str = "ollama"):
        self._log = open(log_path, "wb")  # closed in close()
        self.kind = kind  # "ollama", or "openai" for the fake OpenAI-compatible server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.upstream", kind],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._lock = threading.Lock()
        self.timeout = timeout
        hello = self._read_line(timeout)
        self.url = hello["url"]
        self.pid = self.proc.pid

    def _read_line(self, timeout: float) -> dict:
        line = _readline_bounded(self.proc.stdout, timeout)
        if not line:
            raise RuntimeError(f"the bench upstream exited (code {self.proc.poll()}); see {self._log.name}")
        return json.loads(line)

    def ask(self, op: str, timeout: float | None = None, **args) -> dict:
        """Send one command and wait (bounded) for its answer."""
        with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
            self.proc.stdin.flush()
            return self._read_line((timeout or 0.0) + self.timeout)

    def calls(self, *tags: str, wait_closed_s: float = 0.0) -> dict[str, dict | None]:
        """Open/close records of the calls with these tags; waits up to ``wait_closed_s`` for closes."""
        return self.ask("calls", timeout=wait_closed_s, tags=list(tags), wait_closed_s=wait_closed_s)["calls"]

    def wait_open(self, tag: str, timeout: float = 5.0) -> bool:
        return self.ask("wait_open", timeout=timeout, tag=tag, timeout_s=timeout)["ok"]

    def stamps(self, tag: str) -> list[float]:
        return self.ask("stamps", tag=tag)["stamps"]

    def overlaps(self) -> list[tuple[str, str]]:
        """(old, new) tags of calls that opened while an earlier call of their session was open."""
        return [tuple(pair) for pair in self.ask("overlaps")["overlaps"]]

    def wait_idle(self, timeout: float = 5.0) -> int:
        """Wait until no chat call is open; returns how many still are."""
        return self.ask("wait_idle", timeout=timeout, timeout_s=timeout)["active"]

    def forget(self) -> None:
        self.ask("forget")

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            self.proc.stdout.close()
            self._log.close()


def script_fields(found: dict) -> dict:
    """The fake's Script fields of a directive, its counts expanded."""
    fields = {k: v for k, v in found.items() if k in SCRIPT_FIELDS}
    if found.get("thinking"):
        fields["thinking"] = thinking_chunks(found["thinking"])
    if found.get("calls"):
        fields["tool_calls"] = tool_calls(found["calls"])
    if found.get("tool"):
        fields["tool_calls"] = [found["tool"]]
    return fields


def _call_per_line(fake, s, model: str, pieces):
    """Ollama's pieces with the tool calls, which the fake sends on one line, on a line each."""
    if fake.kind == "ollama" and s.tool_calls and len(s.tool_calls) > 1:
        pieces.tools[:] = [partial(fake.wire.tool_calls, model, [call]) for call in s.tool_calls]
    return pieces


def _last_directive(body: dict) -> dict:
    messages = body.get("messages") or [{}]
    return parse_directive(messages[-1].get("content", "")) or {}


def _tag_of(body: dict) -> str | None:
    return _last_directive(body).get("tag")


def _session_of(body: dict) -> str:
    """The session a call belongs to; a call without one is alone in its own."""
    found = _last_directive(body)
    return found.get("session") or found.get("tag") or f"untagged-{id(body)}"


def _saw_eof(sock: socket.socket) -> bool:
    """Whether the peer has closed ``sock`` (or the fake already has); never blocks."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # closed under us by the call's own thread: closed
        return True


def _readline_bounded(pipe, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = pipe.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the bench upstream did not answer in time")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            more = os.read(fd, 65536)
            if not more:
                return b""
            buf += more
    return buf


# the process side


def serve(kind: str = "ollama") -> int:
    """Run the fake until stdin closes, answering commands from the parent."""
    from tests.fake_ollama import Call, FakeOllama, Script
    from tests.fake_openai import FakeOpenAI

    base = FakeOpenAI if kind == "openai" else FakeOllama

    class _Stamped:
        """The client socket, noting when each write left (the fake writes one token per sendall)."""

        def __init__(self, conn, stamps: list[float]):
            self._conn = conn
            self._stamps = stamps

        def sendall(self, data: bytes) -> None:
            self._conn.sendall(data)
            self._stamps.append(time.monotonic())

        def __getattr__(self, name: str):
            return getattr(self._conn, name)  # select() needs fileno(), waits need recv()

    class BenchFake(base):
        """Takes each call's script from its prompt, remembers calls by tag, and notes overlaps."""

        def __init__(self):
            self.tagged: dict[str, Call] = {}
            self.stamp_log: dict[str, list[float]] = {}
            self.open_by_session: dict[str, list[tuple[Call, socket.socket]]] = {}
            self.overlapping: list[tuple[str | None, str | None]] = []
            super().__init__()
            self.script(self._script_for)

        @staticmethod
        def _script_for(body: dict) -> Script:
            found = _last_directive(body)
            return Script(**script_fields(found)) if found else Script(tokens=8)

        def _pieces(self, s: Script, body: dict, model: str) -> list:
            # the second private hook: Ollama streams each tool call on its own line as it is parsed
            pieces = super()._pieces(s, body, model)
            return _call_per_line(self, s, model, pieces)

        def _chat(self, conn, call: Call) -> None:
            # a private hook: the socket a call is answered on
            found = parse_directive(call.prompt) or {}
            tag = found.get("tag")
            session = _session_of(call.body)
            with self._lock:
                if tag:
                    self.tagged[tag] = call
                olds = [(c, s) for c, s in self.open_by_session.get(session, []) if c.closed_at is None]
                self.open_by_session[session] = [*olds, (call, conn)]
                self._changed.notify_all()
            for old, sock in olds:  # as this call opens: has the session's previous call seen EOF?
                if not _saw_eof(sock):
                    with self._lock:
                        self.overlapping.append((_tag_of(old.body), tag))
            if found.get("stamp") and tag:
                conn = _Stamped(conn, self.stamp_log.setdefault(tag, []))
            super()._chat(conn, call)

        def forget(self) -> None:
            with self._lock:
                self.overlapping.clear()
                self.calls = [c for c in self.calls if c.closed_at is None]
                live = {id(c) for c in self.calls}
                self.tagged = {t: c for t, c in self.tagged.items() if id(c) in live}
                self.stamp_log = {t: s for t, s in self.stamp_log.items() if t in self.tagged}
                self.open_by_session = {
                    k: kept
                    for k, v in self.open_by_session.items()
                    if (kept := [x for x in v if id(x[0]) in live])
                }

    fake = BenchFake()

    def record(call: Call | None) -> dict | None:
        if call is None:
            return None
        return {k: getattr(call, k) for k in ("opened_at", "closed_at", "closed_by", "tokens_sent")}

    def wait(predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with fake._lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                fake._changed.wait(min(left, 0.05))
        return True

    def answer(cmd: dict) -> dict:
        op = cmd["op"]
        if op == "calls":
            tags = cmd["tags"]
            wait(lambda: all((c := fake.tagged.get(t)) and c.closed_at for t in tags), cmd["wait_closed_s"])
            with fake._lock:
                return {"calls": {t: record(fake.tagged.get(t)) for t in tags}}
        if op == "wait_open":
            return {"ok": wait(lambda: cmd["tag"] in fake.tagged, cmd["timeout_s"])}
        if op == "stamps":
            return {"stamps": list(fake.stamp_log.get(cmd["tag"], []))}
        if op == "wait_idle":
            wait(lambda: fake.active == 0, cmd["timeout_s"])
            return {"active": fake.active}
        if op == "overlaps":
            with fake._lock:
                return {"overlaps": list(fake.overlapping)}
        if op == "forget":
            fake.forget()
            return {}
        raise ValueError(f"unknown op {op!r}")

    out = sys.stdout.buffer
    out.write(json.dumps({"url": fake.url}).encode() + b"\n")
    out.flush()
    try:
        for line in sys.stdin.buffer:
            out.write(json.dumps(answer(json.loads(line))).encode() + b"\n")
            out.flush()
    finally:
        fake.close(timeout=10.0)
    return 0


if __name__ == "__main__":
    sys.exit(serve(*sys.argv[1:2]))
