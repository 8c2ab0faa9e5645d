"""Section 16: thinking and tool calls through each dialect, beside plain text, in one run.

The same ``jarvis serve`` and the same scripted fake Ollama answer three kinds
of stream: text tokens, thinking chunks (native ``event: thinking``, OpenAI
``delta.reasoning_content``, Ollama ``message.thinking``) and tool calls, one
per upstream line (native ``event: tool_call``, OpenAI ``delta.tool_calls``
with ``index``, Ollama ``message.tool_calls``). Each kind is compared with text
through the same dialect: time to its first event, and the server's CPU per
event at full speed. The OpenAI and Ollama requests ask for what they get
(``reasoning_effort``/``think``, ``tools``); the native API takes a prompt
only, so its thinking and tool calls come from the script alone.
"""

from __future__ import annotations

import json

from jarvis import sse

from .client import BulkStream
from .compat import DIALECTS, Raw
from .compat import request as text_request
from .servers import proc_stat
from .stats import Cell, Row, Section, ratio
from .streaming import cpu_row, expected_text
from .trials import STEP_TIMEOUT_S, Subject, run_trials, tag
from .upstream import CALL, THINKING, directive, thinking_chunks

KINDS = ("text", "thinking", "tool calls")
ADDED_MS = 2.0  # target: what a kind may add to text's time to first event (p50)
CPU_RATIO = 1.2  # target: a kind's CPU per event over text's
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a number up.",
        "parameters": {"type": "object", "properties": {"i": {"type": "integer"}}, "required": ["i"]},
    },
}
FIRST = {"text": b"tok0 ", "thinking": THINKING.format(0).encode(), "tool calls": CALL.format(0).encode()}
ENDS = {"native": b"event: end", "openai": b"[DONE]", "ollama": b'"done_reason"'}


def script(kind: str, events: int) -> dict:
    """A directive's script for ``events`` events of ``kind`` (and nothing else)."""
    if kind == "thinking":
        return {"tokens": 0, "thinking": events}
    if kind == "tool calls":
        return {"tokens": 0, "calls": events}
    return {"tokens": events}


def request(subject: Subject, dialect: str, kind: str, content: str) -> tuple[str, dict, str]:
    """(path, body, body kind) of one streamed prompt asking for ``kind`` in ``dialect``."""
    path, body, wire = text_request(subject, dialect, content)
    if dialect == "openai" and kind == "thinking":
        body["reasoning_effort"] = "low"
    elif dialect == "ollama" and kind == "thinking":
        body["think"] = True
    elif dialect != "native" and kind == "tool calls":
        body["tools"] = [TOOL]
    return path, body, wire


def parts(body: bytes, dialect: str) -> tuple[str, str, int]:
    """(text, thinking, tool calls) of a whole answer body in ``dialect``."""
    text, thinking, calls = [], [], 0
    if dialect == "ollama":
        for line in body.split(b"\n"):
            if line.strip():
                message = json.loads(line).get("message") or {}
                text.append(message.get("content") or "")
                thinking.append(message.get("thinking") or "")
                calls += len(message.get("tool_calls") or [])
        return "".join(text), "".join(thinking), calls
    for frame in sse.Parser().feed(body):
        if frame.data == b"[DONE]":
            continue
        data = frame.json()
        if dialect == "native":
            text.append(data.get("text", "") if frame.event == "token" else "")
            thinking.append(data.get("text", "") if frame.event == "thinking" else "")
            calls += frame.event == "tool_call"
            continue
        for choice in data.get("choices", []):
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            thinking.append(delta.get("reasoning_content") or "")
            calls += sum(1 for c in delta.get("tool_calls") or [] if (c.get("function") or {}).get("name"))
    return "".join(text), "".join(thinking), calls


def delivered(kind: str, events: int, got: tuple[str, str, int]) -> bool:
    """Whether an answer carried exactly the ``events`` events of ``kind`` that were sent, and no other."""
    want = {
        "text": (expected_text(events), "", 0),
        "thinking": ("", "".join(thinking_chunks(events)), 0),
        "tool calls": ("", "", events),
    }
    return got == want[kind]


def run(subject: Subject, events: int, runs: int, trials: int) -> Section:
    section = Section("16", "Thinking and tool calls through each dialect")
    if subject.fake is None:
        section.notes.append("Needs the scripted upstream: thinking and tool calls are scripted in it.")
        return section
    first = _first_event(subject, trials)
    cpu, wrong = _cpu(subject, events, runs) if subject.pid else ({}, {})
    for dialect in DIALECTS:
        section.rows.append(_first_row(section.title, dialect, first[dialect], trials))
    for dialect in DIALECTS:
        if dialect in cpu:
            section.rows.append(_cpu_row(section.title, dialect, cpu[dialect], runs, events, wrong))
    section.notes.append(
        "Reproduce: `python -m bench --sections 16` (`--quick` for a smoke run). Time to first event is "
        "from sending the request to the arrival of the first event of the kind; text, thinking and tool "
        "calls alternate within each trial, dialect after dialect."
    )
    return section


def _first_event(subject: Subject, trials: int) -> dict[str, dict[str, list[float | None]]]:
    """Time to the first event of each kind through each dialect, in ms; all nine alternate per trial."""
    samples = {d: {k: [] for k in KINDS} for d in DIALECTS}

    def trial(i: int) -> None:
        for dialect in DIALECTS:
            for kind in KINDS:
                content = directive(tag("e"), **script(kind, 3))
                path, body, _ = request(subject, dialect, kind, content)
                stream = Raw(subject.url, path, body)
                try:
                    first = stream.wait_for(FIRST[kind])
                    samples[dialect][kind].append((first - stream.sent_at) * 1000)
                    stream.wait_for(ENDS[dialect])  # read to its end: no client close in the next trial
                finally:
                    stream.close()

    run_trials(trial, trials, done=subject.close)
    return samples


def _cpu(subject: Subject, events: int, runs: int) -> tuple[dict, dict]:
    """Server CPU per event (µs) of full-speed answers, each dialect and kind interleaved per run."""
    cpus: dict[str, dict[str, list[float]]] = {d: {k: [] for k in KINDS} for d in DIALECTS}
    wrong: dict[str, int] = {}
    for _ in range(runs):
        for dialect in DIALECTS:
            for kind in KINDS:
                content = directive(tag("c"), **script(kind, events))
                path, body, wire = request(subject, dialect, kind, content)
                before = proc_stat(subject.pid).cpu_s
                stream = BulkStream(subject.url, path, body, kind=wire, timeout=STEP_TIMEOUT_S * 6)
                cpus[dialect][kind].append((proc_stat(subject.pid).cpu_s - before) / events * 1e6)
                if not delivered(kind, events, parts(stream.body, dialect)):
                    wrong[f"{dialect} {kind}"] = wrong.get(f"{dialect} {kind}", 0) + 1
    return cpus, wrong


def _times(p50: float | None, base: float | None) -> str:
    return "–" if p50 is None or base is None or base <= 0 else f"×{p50 / base:.2f}"


def _first_row(title: str, dialect: str, samples: dict[str, list], trials: int) -> Row:
    cells = {kind: Cell.of(samples[kind]) for kind in KINDS}
    text = cells["text"]
    ratios, added, holds = [], [], True
    for kind in KINDS[1:]:
        cell = cells[kind]
        if cell.p50 is None or text.p50 is None:
            holds = False
            continue
        ratios.append(f"{kind}/text ×{cell.p50 / text.p50:.2f} p50, {_times(cell.p99, text.p99)} p99")
        p50, p99 = cell.p50 - text.p50, cell.p99 - text.p99
        added.append(f"{kind} adds {p50:+.2f} ms p50, {p99:+.2f} ms p99")
        holds = holds and p50 <= ADDED_MS
    failed = trials - min(len(samples[k]) for k in KINDS)  # a trial that timed out left a kind short
    note = f"{trials} prompts of each kind; " + "; ".join(added)
    return Row(
        title,
        f"time to first event, {dialect}",
        "ms",
        cells,
        target=f"p50 ≤ {ADDED_MS:g} ms added over text",
        holds=holds,
        ratio="; ".join(ratios),
        note=note + (f"; {failed} trials timed out" if failed else ""),
        digits=2,
    )


def _cpu_row(title: str, dialect: str, samples: dict[str, list], runs: int, events: int, wrong: dict) -> Row:
    # the total over all runs: /proc counts in 10 ms ticks, a tenth of one run's CPU here
    cells = {kind: Cell(value=sum(samples[kind]) / len(samples[kind])) for kind in KINDS}
    text = cells["text"]
    holds = all(cells[k].value <= CPU_RATIO * text.value for k in KINDS[1:]) and not any(
        key.startswith(dialect) for key in wrong
    )
    row = cpu_row(
        title,
        cells,
        target=f"each kind ≤ {CPU_RATIO:g} × text",
        holds=holds,
        ratio=", ".join(ratio(cells[k], text, f"{k}/text") for k in KINDS[1:]),
    )
    row.measure = f"server CPU per event at full speed, {dialect}"
    bad = [f"{k}: {n} runs delivered other than sent" for k, n in wrong.items() if k.startswith(dialect)]
    row.note = "; ".join([f"all {runs} runs of {events:,} events each, summed", row.note, *bad])
    return row
