"""Section 9: the OpenAI and Ollama dialects beside the native API, in one run.

Each dialect's answer goes through the same stream as a native one, so what
is measured here is the cost of its framing and parsing: throughput and CPU
per token at full speed, time to the first token, and how fast a client that
closes its connection closes the upstream, in each state of the answer.
"""

from __future__ import annotations

import json
import time

from jarvis import sse

from .client import BulkStream, Closed, _connect, _post_bytes, _Response
from .servers import proc_stat
from .stats import Cell, Row, Section, judge, ratio
from .streaming import cpu_row, expected_text, medians, throughput_row
from .trials import OLD_SCRIPT, STEP_TIMEOUT_S, Subject, run_trials, tag
from .upstream import directive

DIALECTS = ("native", "openai", "ollama")
STATES = ("streaming", "stalled", "loading")


def request(subject: Subject, dialect: str, content: str) -> tuple[str, dict, str]:
    """(path, body, body kind) of one streamed prompt in ``dialect``."""
    messages = [{"role": "user", "content": content}]
    if dialect == "openai":
        return "/v1/chat/completions", {"model": "tiny", "messages": messages, "stream": True}, "sse"
    if dialect == "ollama":
        return "/api/chat", {"model": "tiny", "messages": messages}, "ndjson"
    return f"/api/sessions/{subject.session()}/messages", {"content": content}, "sse"


def text_of(body: bytes, dialect: str) -> str:
    """The answer's text in a whole body of ``dialect``."""
    out = []
    if dialect == "ollama":
        for line in body.split(b"\n"):
            if line.strip():
                out.append((json.loads(line).get("message") or {}).get("content", ""))
        return "".join(out)
    for frame in sse.Parser().feed(body):
        if frame.data == b"[DONE]":
            continue
        data = frame.json()
        if dialect == "openai":
            out.extend((c.get("delta") or {}).get("content") or "" for c in data.get("choices", []))
        elif "text" in data:
            out.append(data["text"])
    return "".join(out)


class Raw:
    """One streamed call read from a raw socket, with the time each awaited piece arrived."""

    def __init__(self, url: str, path: str, body: dict):
        self.sock = _connect(url, STEP_TIMEOUT_S)
        self.sent_at = time.monotonic()
        self.sock.sendall(_post_bytes(url, path, body))
        self.deadline = self.sent_at + STEP_TIMEOUT_S
        self.response: _Response | None = None
        self.body = b""
        self.at = self.sent_at  # when the last bytes arrived

    def wait_for(self, needle: bytes) -> float:
        """When ``needle`` had arrived in the body; Closed if the body ended first."""
        if self.response is None:
            self.response = _Response(self.sock, self.deadline)
            self.body, self.at = self.response.early, self.response.head_at
        while needle not in self.body:
            if self.response.eof:
                raise Closed(f"the body ended before {needle!r}")
            data, self.at = self.response.read_some(self.deadline)
            self.body += data
        return self.at

    def close(self) -> None:
        self.sock.close()


def compat(subject: Subject, direct: tuple[str, str] | None, tokens: int, runs: int, trials: int) -> Section:
    section = Section("9", "OpenAI and Ollama APIs")
    if subject.fake is None:
        section.notes.append("Needs the scripted upstream: token counts and closes are read from it.")
        return section
    _throughput(section, subject, direct, tokens, runs)
    _first_token(section, subject, trials)
    _close(section, subject, trials)
    return section


def _throughput(section: Section, subject: Subject, direct, tokens: int, runs: int) -> None:
    want = expected_text(tokens)
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    wrong: dict[str, int] = {}
    parties = [*DIALECTS, *(["direct"] if direct else [])]
    for _ in range(runs):
        for who in parties:  # interleaved, so drift hits every party alike
            content = directive(tag("t"), tokens=tokens)
            if who == "direct":
                messages = [{"role": "user", "content": content}]
                body = {"model": direct[1], "messages": messages, "stream": True}
                stream = BulkStream(direct[0], "/api/chat", body, kind="ndjson")
                text = stream.text()
            else:
                path, body, kind = request(subject, who, content)
                before = proc_stat(subject.pid).cpu_s if subject.pid else 0.0
                stream = BulkStream(subject.url, path, body, kind=kind)
                if subject.pid:
                    cpus.setdefault(who, []).append((proc_stat(subject.pid).cpu_s - before) / tokens * 1e6)
                text = text_of(stream.body, who)
            if text != want:
                wrong[who] = wrong.get(who, 0) + 1
            rates.setdefault(who, []).append(tokens / (stream.done_at - stream.sent_at))
    cells = medians(rates)
    native = cells["native"]
    shares = [f"{who}/native ×{cells[who].value / native.value:.2f}" for who in ("openai", "ollama")]
    holds = all(cells[w].value >= 0.9 * native.value for w in ("openai", "ollama")) and not wrong
    section.rows.append(
        throughput_row(
            section.title,
            "tok/s",
            cells,
            (runs, tokens, wrong),
            shares,
            target="each dialect ≥ 0.9 × native",
            holds=holds,
            ratio=ratio(cells.get("native"), cells.get("direct"), "native/direct"),
        )
    )
    if cpus:
        cpu = medians(cpus)
        holds = all(cpu[w].value <= 1.1 * cpu["native"].value for w in ("openai", "ollama"))
        shares = ", ".join(ratio(cpu[w], cpu["native"], f"{w}/native") for w in ("openai", "ollama"))
        target = "each dialect ≤ 1.1 × native"
        section.rows.append(cpu_row(section.title, cpu, target=target, holds=holds, ratio=shares))


def _first_token(section: Section, subject: Subject, trials: int) -> None:
    samples: dict[str, list[float | None]] = {d: [] for d in DIALECTS}

    def trial(i: int) -> None:
        for who in DIALECTS:  # alternating, so each dialect meets the same conditions
            path, body, _ = request(subject, who, directive(tag("f"), tokens=3))
            stream = Raw(subject.url, path, body)
            try:
                first = stream.wait_for(b"tok0 ")
                samples[who].append((first - stream.sent_at) * 1000)
                stream.wait_for(b"tok2 ")
            finally:
                stream.close()

    _, failed = run_trials(trial, trials, done=subject.close)
    native = Cell.of(samples["native"])
    cells = {"native": native}
    for who in ("openai", "ollama"):
        cells[who] = Cell.of(samples[who]).minus(native)
    section.rows.append(
        Row(
            section.title,
            "time to first token, added over native",
            "ms",
            cells,
            target="p50 ≤ 2 ms added",
            holds=all(cells[w].p50 is not None and cells[w].p50 <= 2.0 for w in ("openai", "ollama")),
            note=f"{trials} prompts each, alternating; the native cell is its own time to first token"
            + (f"; {failed} trials timed out" if failed else ""),
        )
    )


def _close(section: Section, subject: Subject, trials: int) -> None:
    fake = subject.fake
    bound_s = 1.0
    for state in STATES:
        cells = {}
        for who in ("openai", "ollama"):

            def trial(i: int, who=who, state=state) -> float | None:
                name = tag("k")
                path, body, _ = request(subject, who, directive(name, **OLD_SCRIPT[state]))
                stream = Raw(subject.url, path, body)
                try:
                    if state == "streaming":
                        stream.wait_for(b"tok0 ")
                    elif state == "stalled":
                        stream.wait_for(b"tok2 ")
                    elif not fake.wait_open(name, STEP_TIMEOUT_S):
                        raise TimeoutError("the upstream never saw the call")
                    subject.phase()
                finally:
                    gone = time.monotonic()
                    stream.close()
                call = fake.calls(name, wait_closed_s=bound_s)[name]
                closed = call and call["closed_at"]
                return None if closed is None else (closed - gone) * 1000

            results, failed = run_trials(trial, trials, done=subject.close)
            cells[who] = Cell.of(results, bound=bound_s * 1000)
        section.rows.append(
            Row(
                section.title,
                f"client close → upstream closed, {state}",
                "ms",
                cells,
                target="p99 ≤ 25 ms",
                holds=all(judge(c, 25.0) for c in cells.values()),
                note=f"{trials} trials each under jarvis serve",
            )
        )
