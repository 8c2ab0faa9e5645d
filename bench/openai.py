"""Section 8: Jarvis reading an OpenAI-compatible server (``JARVIS_BACKEND=openai``).

The fake OpenAI-compatible server from the tests runs in its own process, as
the fake Ollama does, and a second ``jarvis serve`` reads it. Throughput is
one full-speed answer through Jarvis against the same answer read directly
from the fake (server-sent events, parsed afterwards), interleaved; Stop is
timed to the moment the fake saw its connection close, in each state.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from . import latency, servers
from .client import BulkStream
from .servers import proc_stat
from .stats import Cell, Row, Section, ratio
from .streaming import expected_text
from .trials import Subject, tag
from .upstream import Fake, directive

NAME = "Jarvis (openai)"


def run(workdir: Path, model: str, max_streams: int, plan) -> Section:
    """Throughput against the direct read, and Stop → upstream closed in each state."""
    section = Section("8", "OpenAI-compatible upstream")
    started: list = []
    try:
        fake = Fake(str(servers.REPO), str(workdir / "openai-upstream.log"), kind="openai")
        started.append(fake)
        jarvis = servers.start_jarvis(workdir, fake.url + "/v1", model, max_streams, backend="openai")
        started.append(jarvis)
        subject = Subject(NAME, jarvis.url, jarvis.pid, fake)
        latency.warm_up(subject, plan.warm)
        section.rows.extend(_throughput(subject, fake.url, model, plan.tokens, plan.runs))
        fake.forget()
        stops = latency.stop([subject], plan.trials_other, plan.slow_trials, plan.bound_s)
        for row in stops.rows:
            if "upstream closed" in row.measure:
                row.section = section.title
                section.rows.append(row)
        section.notes.extend(stops.notes)
    finally:
        for thing in reversed(started):
            if isinstance(thing, Fake):
                thing.close()
            else:
                thing.stop()
    return section


def _throughput(subject: Subject, fake_url: str, model: str, tokens: int, runs: int) -> list[Row]:
    """Throughput through Jarvis and directly, and what each token cost Jarvis's process."""
    want = expected_text(tokens)
    rates: dict[str, list[float]] = {NAME: [], "direct": []}
    cpus: list[float] = []
    wrong = 0
    for _ in range(runs):  # interleaved, so drift hits both alike
        content = directive(tag("t"), tokens=tokens)
        body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True}
        direct = BulkStream(fake_url, "/v1/chat/completions", body, kind="openai")
        sid = subject.session()
        before = proc_stat(subject.pid).cpu_s
        through = BulkStream(
            subject.url, f"/api/sessions/{sid}/messages", {"content": directive(tag("t"), tokens=tokens)}
        )
        cpus.append((proc_stat(subject.pid).cpu_s - before) / tokens * 1e6)
        for name, stream in ((NAME, through), ("direct", direct)):
            wrong += stream.text() != want
            rates[name].append(tokens / (stream.done_at - stream.sent_at))
    cells = {name: Cell(value=statistics.median(v)) for name, v in rates.items()}
    mine, base = cells[NAME], cells["direct"]
    note = f"median of {runs} runs of {tokens:,} tokens each"
    if wrong:
        note += f"; {wrong} runs delivered text other than sent"
    throughput = Row(
        "OpenAI-compatible upstream",
        "throughput, one stream at full speed",
        "tok/s",
        cells,
        target="≥ 0.9 × direct",
        holds=mine.value >= 0.9 * base.value and not wrong,
        ratio=ratio(mine, base, f"{NAME}/direct"),
        note=note,
        digits=0,
    )
    cpu = Row(
        "OpenAI-compatible upstream",
        "server CPU per token at full speed",
        "µs",
        {NAME: Cell(value=statistics.median(cpus))},
        note="utime+stime of the Jarvis process over the stream, /proc/<pid>/stat (10 ms ticks)",
    )
    return [throughput, cpu]
