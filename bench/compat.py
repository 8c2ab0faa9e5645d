"""Section 11: the dialects beside the native API, in one run.

Each dialect's answer goes through the same stream as a native one, so what
is measured here is the cost of its framing and parsing: throughput and CPU
per token at full speed, time to the first token, and how fast a client that
closes its connection closes the upstream, in each state of the answer.
OpenAI's chat completions and Ollama's chat are judged against the native
API; Anthropic's Messages and OpenAI's Responses against chat completions,
the door their clients would otherwise use.
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

DIALECTS = ("native", "openai", "ollama")  # section 16 builds its thinking and tool-call requests on these
DOORS = (*DIALECTS, "anthropic", "responses")  # what this section measures
# each dialect is judged against its base: chat completions ("openai") for the newer two
BASES = {"openai": "native", "ollama": "native", "anthropic": "openai", "responses": "openai"}
STATES = ("streaming", "stalled", "loading")
CLOSE_BOUND_S = 1.0  # how long to wait for an upstream close that may never come
MAX_TOKENS = 100_000  # Anthropic requires max_tokens: as many as any script here sends


def request(subject: Subject, dialect: str, content: str) -> tuple[str, dict, str]:
    """(path, body, body kind) of one streamed prompt in ``dialect``."""
    messages = [{"role": "user", "content": content}]
    if dialect == "openai":
        return "/v1/chat/completions", {"model": "tiny", "messages": messages, "stream": True}, "sse"
    if dialect == "ollama":
        return "/api/chat", {"model": "tiny", "messages": messages}, "ndjson"
    if dialect == "anthropic":
        body = {"model": "tiny", "max_tokens": MAX_TOKENS, "messages": messages, "stream": True}
        return "/v1/messages", body, "sse"
    if dialect == "responses":
        return "/v1/responses", {"model": "tiny", "input": messages, "stream": True}, "sse"
    return f"/api/sessions/{subject.session()}/messages", {"content": content}, "sse"


def text_of(body: bytes, dialect: str) -> str:
    """The answer's text in a whole body of ``dialect``: its deltas only (Responses repeats the
    whole text in its closing events)."""
    if dialect == "ollama":
        lines = (json.loads(line) for line in body.split(b"\n") if line.strip())
        return "".join((data.get("message") or {}).get("content", "") for data in lines)
    frames = (f for f in sse.Parser().feed(body) if f.data != b"[DONE]")
    return "".join(_delta(dialect, frame.event, frame.json()) for frame in frames)


def _delta(dialect: str, event: str, data: dict) -> str:
    """The text one server-sent event of ``dialect`` carries."""
    if dialect == "openai":
        return "".join((c.get("delta") or {}).get("content") or "" for c in data.get("choices", []))
    if dialect == "anthropic":
        delta = data.get("delta") or {}
        return delta.get("text", "") if event == "content_block_delta" else ""
    if dialect == "responses":
        return data["delta"] if event == "response.output_text.delta" else ""
    return data.get("text", "")


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
    section = Section("11", "The dialects: OpenAI, Ollama and Anthropic APIs")
    if subject.fake is None:
        section.notes.append("Needs the scripted upstream: token counts and closes are read from it.")
        return section
    _throughput(section, subject, direct, tokens, runs)
    _first_token(section, subject, trials)
    _close(section, subject, trials)
    return section


def _against_base(cells: dict[str, Cell], holds) -> tuple[bool, list[str]]:
    """Whether every dialect holds against its base (``holds(cell, base)``), and each ratio."""
    ok = all(holds(cells[who], cells[base]) for who, base in BASES.items())
    return ok, [ratio(cells[who], cells[base], f"{who}/{base}") for who, base in BASES.items()]


def _one_stream(subject: Subject, direct, who: str, content: str) -> tuple[BulkStream, str, float | None]:
    """One full-speed answer through ``who``: the stream, its text, and the server CPU µs it cost."""
    if who == "direct":
        body = {"model": direct[1], "messages": [{"role": "user", "content": content}], "stream": True}
        stream = BulkStream(direct[0], "/api/chat", body, kind="ndjson")
        return stream, stream.text(), None
    path, body, kind = request(subject, who, content)
    before = proc_stat(subject.pid).cpu_s if subject.pid else 0.0
    stream = BulkStream(subject.url, path, body, kind=kind)
    cpu = (proc_stat(subject.pid).cpu_s - before) * 1e6 if subject.pid else None
    return stream, text_of(stream.body, who), cpu


def _throughput(section: Section, subject: Subject, direct, tokens: int, runs: int) -> None:
    want = expected_text(tokens)
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    wrong: dict[str, int] = {}
    for _ in range(runs):
        for who in [*DOORS, *(["direct"] if direct else [])]:  # interleaved: drift hits all alike
            stream, text, cpu = _one_stream(subject, direct, who, directive(tag("t"), tokens=tokens))
            if text != want:
                wrong[who] = wrong.get(who, 0) + 1
            rates.setdefault(who, []).append(tokens / (stream.done_at - stream.sent_at))
            if cpu is not None:
                cpus.setdefault(who, []).append(cpu)
    cells = medians(rates)
    holds, shares = _against_base(cells, lambda c, base: c.value >= 0.9 * base.value)
    section.rows.append(
        throughput_row(
            section.title,
            "tok/s",
            cells,
            (runs, tokens, wrong),
            shares,
            target="openai, ollama ≥ 0.9 × native; anthropic, responses ≥ 0.9 × openai",
            holds=holds and not wrong,
            ratio=ratio(cells.get("native"), cells.get("direct"), "native/direct"),
        )
    )
    if cpus:
        # summed, not a median: one answer costs tens of ms and /proc counts 10 ms ticks
        cpu = {who: Cell(value=sum(us) / (len(us) * tokens)) for who, us in cpus.items()}
        holds, shares = _against_base(cpu, lambda c, base: c.value <= 1.1 * base.value)
        target = "openai, ollama ≤ 1.1 × native; anthropic, responses ≤ 1.1 × openai"
        row = cpu_row(section.title, cpu, target=target, holds=holds, ratio=", ".join(shares), digits=2)
        row.note += f", summed over the {runs} runs"
        section.rows.append(row)


def _first_token(section: Section, subject: Subject, trials: int) -> None:
    samples: dict[str, list[float | None]] = {d: [] for d in DOORS}

    def trial(i: int) -> None:
        for who in DOORS:  # alternating, so each dialect meets the same conditions
            path, body, _ = request(subject, who, directive(tag("f"), tokens=3))
            stream = Raw(subject.url, path, body)
            try:
                first = stream.wait_for(b"tok0 ")
                samples[who].append((first - stream.sent_at) * 1000)
                stream.wait_for(b"tok2 ")
            finally:
                stream.close()

    _, failed = run_trials(trial, trials, done=subject.close)
    timed_out = f"; {failed} trials timed out" if failed else ""
    for base in ("native", "openai"):
        own = Cell.of(samples[base])
        cells = {base: own} | {w: Cell.of(samples[w]).minus(own) for w, b in BASES.items() if b == base}
        section.rows.append(
            Row(
                section.title,
                f"time to first token, added over {base}",
                "ms",
                cells,
                target="p50 ≤ 2 ms added",
                holds=all(c.p50 is not None and c.p50 <= 2.0 for w, c in cells.items() if w != base),
                note=f"{trials} prompts through each of the {len(DOORS)} doors, alternating; "
                f"the {base} cell is its own time to first token" + timed_out,
            )
        )


def _close(section: Section, subject: Subject, trials: int) -> None:
    doors = tuple(BASES)
    for state in STATES:
        # trial i goes through doors[i % 4]: alternating, so a burst of load hits every door alike
        results, _ = run_trials(
            lambda i, state=state: _closed_after(subject, doors[i % len(doors)], state),
            trials * len(doors),
            done=subject.close,
        )
        cells = {
            who: Cell.of(results[k :: len(doors)], bound=CLOSE_BOUND_S * 1000) for k, who in enumerate(doors)
        }
        section.rows.append(
            Row(
                section.title,
                f"client close → upstream closed, {state}",
                "ms",
                cells,
                target="p99 ≤ 25 ms",
                holds=all(judge(c, 25.0) for c in cells.values()),
                note=f"{trials} trials each under jarvis serve, the {len(doors)} dialects alternating",
            )
        )


def _closed_after(subject: Subject, who: str, state: str) -> float | None:
    """Client close → upstream closed (ms) through ``who``, with the answer in ``state``."""
    fake, name = subject.fake, tag("k")
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
    call = fake.calls(name, wait_closed_s=CLOSE_BOUND_S)[name]
    closed = call and call["closed_at"]
    return None if closed is None else (closed - gone) * 1000
