"""Section 17: answers that use tools: Stop while a tool runs, and what one tool round costs.

A ``jarvis serve`` of its own reads the run's scripted fake Ollama with
JARVIS_MCP_CONFIG naming the tests' fake MCP server (``tests/fake_mcp.py``, stdio,
built with the SDK). A directive's ``tool`` makes the fake answer the first model
call with that one tool call; the agent's second call (its last message the tool
result) gets eight tokens of text. The fake MCP server appends what it lives
through to a log (``sleeping``, ``cancelled``, with its pid), so a Stop is sent
only once the tool is really running, and a hung server's restart can be watched.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

from .client import EventStream
from .servers import REPO, ServerProcess, jarvis_command, jarvis_env
from .stats import Cell, Row, Section, judge
from .trials import STEP_TIMEOUT_S, Subject, run_trials, tag
from .upstream import Fake

SERVER = "fake"  # the MCP server's name: its tools are fake__echo, fake__sleep...
SLEEP_S = 30.0  # the tool Stop meets: far longer than any trial
ROUND_SLEEP_S = 0.05  # the tool whose round is timed, minus this
STOP_MS = 50.0  # target: stop → end event while a tool runs, p99
ROUND_MS = 5.0  # target: one tool round over the tool's own time, p50
BOUND_S = 2.0  # how long to wait for an end event that may never come
GONE_S = 10.0  # how long to wait for a hung tool server to be stopped
REPRODUCE = "python -m bench --sections 17"
HOW = """- **Answers that use tools (section 17).** A second `jarvis serve`, on the same fake Ollama, with
  `JARVIS_MCP_CONFIG` naming `tests/fake_mcp.py`; a directive's `tool` makes the fake answer the first
  model call with that one tool call. The fake MCP server appends `sleeping` and `cancelled` (with its
  pid) to a log the bench reads, so Stop is sent only once the tool really runs, and a hung server's
  process is watched in `/proc` until it is gone. A tool round is timed between the client's arrival
  times of the `tool_call` and `tool_result` events.
"""  # the bullet of "How it is measured" (bench/__main__.py's ABOUT)


class McpLog:
    """The fake MCP server's log: one JSON object a line, appended by every process it runs as."""

    def __init__(self, path: Path):
        self.path = path

    def records(self, event: str) -> list[dict]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        found = (json.loads(line) for line in lines if line.strip())
        return [r for r in found if r.get("event") == event]

    def wait(self, event: str, seen: int, deadline: float) -> dict:
        """The record of the next ``event`` after the first ``seen``; TimeoutError at the deadline."""
        while time.monotonic() < deadline:
            records = self.records(event)
            if len(records) > seen:
                return records[seen]
            time.sleep(0.002)
        raise TimeoutError(f"the MCP server logged no {event!r} in time")


def start(upstream: str, workdir: Path) -> tuple[ServerProcess, McpLog]:
    """``jarvis serve`` with the fake MCP server configured (started by the first answer)."""
    log = workdir / "fake-mcp.log"
    env = {"FAKE_MCP_LOG": str(log), "PYTHONPATH": str(REPO)}
    args = ["-m", "tests.fake_mcp", "bench-agent"]
    config = workdir / "mcp.json"
    spec = {"command": sys.executable, "args": args, "env": env}
    config.write_text(json.dumps({"mcpServers": {SERVER: spec}}))
    env = jarvis_env(upstream, "tiny", workdir / "agent.sqlite3", JARVIS_MCP_CONFIG=str(config))
    server = ServerProcess("jarvis serve (tools)", [*jarvis_command(), "serve", "--port", "0"], env, workdir)
    return server, McpLog(log)


def tool(name: str, **arguments) -> dict:
    return {"name": f"{SERVER}__{name}", "arguments": arguments}


def ask(subject: Subject, call: dict) -> tuple[str, EventStream]:
    """A new session's prompt whose model calls ``call`` first: (session, stream)."""
    sid = subject.session()
    stream = subject.send(sid, tag("tool"), tokens=0, tool=call)
    if stream.status != 200:
        raise RuntimeError(f"the prompt was refused: {stream.status} {stream.error}")
    return sid, stream


def run(fake: Fake, workdir: Path, quick: bool) -> Section:
    section = Section("17", "Answers that use tools: Stop while a tool runs, one tool round")
    if importlib.util.find_spec("mcp") is None:
        section.notes.append("Not measured: the MCP SDK is not installed (pip install -e '.[tools]').")
        return section
    server, log = start(fake.url, workdir)
    subject = Subject("Jarvis", server.url, server.pid, fake)
    try:
        _round(subject, "echo", {"text": "warm"}, 0.0)  # starts the MCP server: not measured
        n_stop, n_hung, n_round = (10, 2, 20) if quick else (60, 10, 100)
        stops, odd = _stops(subject, log, "sleep", n_stop)
        section.rows.append(_stop_row(section.title, "honours cancel", "fake__sleep", stops, odd, n_stop))
        cancelled = len(log.records("cancelled"))
        section.rows[-1].note += f"; the MCP server logged notifications/cancelled for {cancelled}"
        hung, odd = _stops(subject, log, "sleep_ignoring_cancel", n_hung)
        row = _stop_row(section.title, "ignores cancel", "fake__sleep_ignoring_cancel", hung, odd, n_hung)
        section.rows.append(row)
        section.rows.append(_gone_row(section.title, hung))
        section.rows += _round_rows(section.title, subject, n_round)
    finally:
        subject.close()
        server.stop()
    section.notes.append(
        f"Reproduce: `{REPRODUCE}` (`--quick` for a smoke run). A `jarvis serve` of its own, with "
        "JARVIS_MCP_CONFIG naming tests/fake_mcp.py (stdio) and the tool settings at their defaults "
        "(JARVIS_TOOL_CANCEL_TIMEOUT 0.5 s); every prompt in a new session."
    )
    return section


def _stops(subject: Subject, log: McpLog, name: str, n: int) -> tuple[list, int]:
    """Stop → end event (ms), sent once the tool is running; and for each, stop → its server gone."""
    odd = [0]

    def trial(i: int) -> tuple[float | None, float | None, int]:
        seen = len(log.records("sleeping"))
        sid, stream = ask(subject, tool(name, seconds=SLEEP_S))
        try:
            deadline = time.monotonic() + STEP_TIMEOUT_S * 2  # a restarted server starts first
            stream.until(("tool_call",), deadline)
            pid = log.wait("sleeping", seen, deadline)["pid"]
            subject.phase()
            control = subject.control()
            sent = control.send("POST", f"/api/sessions/{sid}/stop")
            try:
                end = stream.until(("end", "tool_result"), sent + BOUND_S)
                ended = (end.at - sent) * 1000 if end.name == "end" else None
            except TimeoutError:
                ended = None
            control.read()
        finally:
            stream.close()
        if (stream.end() or {}).get("status") != "stopped":
            odd[0] += 1
        gone = _gone_ms(pid, sent) if name != "sleep" else None
        return ended, gone, pid

    results, failed = run_trials(trial, n, done=subject.close)
    return [r for r in results if r is not None], odd[0] + failed


def _gone_ms(pid: int, since: float) -> float | None:
    """When the process ``pid`` (Jarvis's child) had gone, in ms after ``since``; None past GONE_S."""
    while time.monotonic() < since + GONE_S:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            state = "gone"
        if state in ("gone", "Z", "X"):
            return (time.monotonic() - since) * 1000
        time.sleep(0.005)
    return None


def _round(subject: Subject, name: str, arguments: dict, own_ms: float) -> tuple[float, float, bool]:
    """One answer with one tool round: (tool_call → tool_result − own ms, Jarvis's duration_ms,
    whether the two events arrived in one read)."""
    _, stream = ask(subject, tool(name, **arguments))
    try:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        call = stream.until(("tool_call",), deadline)
        result = stream.until(("tool_result",), deadline)
        stream.until(("end",), deadline)
    finally:
        stream.close()
    if result.data.get("is_error"):
        raise RuntimeError(f"{name} answered an error: {result.data.get('content')}")
    return (result.at - call.at) * 1000 - own_ms, result.data["duration_ms"], result.at == call.at


def _round_rows(title: str, subject: Subject, n: int) -> list[Row]:
    kinds = {
        f"fake__sleep {ROUND_SLEEP_S:g} s": ("sleep", {"seconds": ROUND_SLEEP_S}, ROUND_SLEEP_S * 1000),
        "fake__echo (≈ 0 s)": ("echo", {"text": "hello"}, 0.0),
    }
    samples: dict[str, list] = {k: [] for k in kinds}

    def trial(i: int) -> None:
        for kind, (name, arguments, own_ms) in kinds.items():  # the two alternate
            samples[kind].append(_round(subject, name, arguments, own_ms))

    _, failed = run_trials(trial, n, done=subject.close)
    rows = []
    for kind, got in samples.items():
        cell = Cell.of([g[0] for g in got])
        inside = Cell.of([g[1] for g in got])
        rest = Cell.of([g[0] + kinds[kind][2] - g[1] for g in got])
        together = sum(1 for g in got if g[2])
        note = (
            f"{len(got)} rounds; tool_call event → tool_result event minus {kinds[kind][2]:g} ms. Of the "
            f"round, the MCP call as Jarvis times it (duration_ms) p50 / p99 {inside.p50:.2f} / "
            f"{inside.p99:.2f} ms; the rest (the model's stream ending, the agent loop, the event "
            f"written) {rest.p50:.2f} / {rest.p99:.2f} ms"
        )
        if together:
            note += f"; in {together} of them both events came in one read (0 ms, hiding the round)"
        if failed:
            note += f"; {failed} trials timed out"
        holds = cell.p50 is not None and cell.p50 <= ROUND_MS and not failed
        rows.append(
            Row(title, f"one tool round over the tool's own time, {kind}", "ms", {"Jarvis": cell},
                target=f"p50 ≤ {ROUND_MS:g} ms", holds=holds, note=note, digits=2)
        )  # fmt: skip
    return rows


def _stop_row(title: str, how: str, name: str, results: list, odd: int, n: int) -> Row:
    cell = Cell.of([r[0] for r in results], bound=BOUND_S * 1000)
    note = f"{name}({SLEEP_S:g}), Stop sent once its server logged it was sleeping; {len(results)} of {n}"
    if odd:
        note += f"; {odd} answers ended other than stopped (or timed out)"
    holds = judge(cell, STOP_MS) and not odd
    return Row(
        title, f"stop → end event, tool running that {how}", "ms", {"Jarvis": cell},
        target=f"p99 ≤ {STOP_MS:g} ms", holds=holds, note=note, digits=2,
    )  # fmt: skip


def _gone_row(title: str, results: list) -> Row:
    cell = Cell.of([r[1] for r in results], bound=GONE_S * 1000)
    note = (
        "informational: from Stop until the hung server's process was gone (no answer to the ping within "
        "JARVIS_TOOL_CANCEL_TIMEOUT, then terminate); the next answer starts a new one: the "
        f"{len(results)} hung calls ran in {len({r[2] for r in results})} server processes"
    )
    return Row(title, "stop → hung tool server stopped", "ms", {"Jarvis": cell}, note=note)
