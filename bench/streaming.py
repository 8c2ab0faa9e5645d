"""Section 4: what relaying a stream costs, against reading the upstream directly.

Throughput: one answer of many tokens sent with no pause, read to its end by
a client that only receives (it parses afterwards, so it is not the
bottleneck); the server's CPU comes from /proc/<pid>/stat over the same
interval. Latency: an answer at 50 tokens/s whose every write the fake
timestamps; each token's arrival at the client minus its departure from the
fake, through the server and directly, read at the same time.
"""

from __future__ import annotations

import statistics
import time

from .client import BulkStream, EventStream, Mux
from .latency import STEP_TIMEOUT_S
from .servers import proc_stat
from .stats import Cell, Row, Section, judge, ratio
from .trials import Subject, tag
from .upstream import directive

PACED_INTERVAL_S = 0.02  # 50 tokens/s


def expected_text(tokens: int) -> str:
    return "".join(f"tok{i} " for i in range(tokens))


def medians(samples: dict[str, list[float]]) -> dict[str, Cell]:
    """Each party's median, as the cell of a single-valued row."""
    return {name: Cell(value=statistics.median(v)) for name, v in samples.items()}


def throughput_row(title: str, unit: str, cells: dict[str, Cell], runs: tuple, notes=(), **judged) -> Row:
    """The row of one stream at full speed; ``runs`` is (runs, tokens each, wrong texts per party)."""
    count, tokens, wrong = runs
    said = [f"median of {count} runs of {tokens:,} tokens each"]
    said += [f"{name}: {n} runs delivered text other than sent" for name, n in wrong.items()]
    note = "; ".join([*said, *notes])
    return Row(title, "throughput, one stream at full speed", unit, cells, note=note, digits=0, **judged)


def cpu_row(title: str, cells: dict[str, Cell], **judged) -> Row:
    """The row of the server's CPU per token at full speed, read from /proc."""
    note = "utime+stime of the server process over the stream, /proc/<pid>/stat"
    return Row(title, "server CPU per token at full speed", "µs", cells, note=note, **judged)


def _chat_body(model: str, content: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": True}


def _bulk(subject: Subject | None, direct: tuple[str, str] | None, script: dict) -> tuple[BulkStream, float]:
    """One full-speed answer; returns it and the server CPU seconds it cost (0 for the direct read)."""
    content = directive(tag("t"), **script)
    if subject is None:
        url, model = direct
        return BulkStream(url, "/api/chat", _chat_body(model, content), kind="ndjson"), 0.0
    sid = subject.session()
    before = proc_stat(subject.pid).cpu_s if subject.pid else 0.0
    stream = BulkStream(subject.url, f"/api/sessions/{sid}/messages", {"content": content})
    cpu = (proc_stat(subject.pid).cpu_s - before) if subject.pid else 0.0
    return stream, cpu


def streaming(subjects: list[Subject], direct: tuple[str, str] | None, tokens: int, runs: int, paced: int):
    """Throughput and CPU per token at full speed; added latency per token at 50 tokens/s."""
    section = Section("4", "Streaming cost")
    primary = subjects[0]
    scripted = primary.scripted
    unit = "tok/s" if scripted else "chars/s"
    want = expected_text(tokens)
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    wrong: dict[str, int] = {}
    parties = [(s.name, s) for s in subjects] + ([("direct", None)] if direct else [])
    for _ in range(runs):
        for name, subject in parties:  # interleaved, so drift hits every party alike
            stream, cpu = _bulk(subject, direct, {"tokens": tokens})
            text = stream.text()
            if scripted and text != want:
                wrong[name] = wrong.get(name, 0) + 1
            amount = tokens if scripted else len(text)
            rates.setdefault(name, []).append(amount / (stream.done_at - stream.sent_at))
            if subject is not None and subject.pid:
                cpus.setdefault(name, []).append(cpu / amount * 1e6)
    cells = medians(rates)
    mine, base, ref = cells.get(primary.name), cells.get("direct"), cells.get("reference")
    holds = None
    if mine and base:
        holds = mine.value >= 0.6 * base.value and (ref is None or mine.value >= ref.value)
    section.rows.append(
        throughput_row(
            section.title,
            unit,
            cells,
            (runs, tokens, wrong),
            target="≥ 0.6 × direct and ≥ reference",
            holds=holds if not wrong.get(primary.name) else False,
            ratio=ratio(mine, base, f"{primary.name}/direct"),
        )
    )
    if cpus:
        cells = medians(cpus)
        section.rows.append(
            cpu_row(
                section.title,
                cells,
                target="≤ 15 µs",
                holds=judge(cells.get(primary.name), 15.0),
                ratio=ratio(cells.get("reference"), cells.get(primary.name), "ref/" + primary.name),
            )
        )
    if scripted and paced:
        section.rows.append(_paced(subjects, direct, paced))
    return section


def _paced(subjects: list[Subject], direct: tuple[str, str] | None, count: int) -> Row:
    """Per-token latency at 50 tokens/s through each server and directly, read side by side."""
    fake = subjects[0].fake
    script = {"tokens": count, "interval_s": PACED_INTERVAL_S, "stamp": True}
    streams: dict[str, tuple[EventStream, str]] = {}
    for subject in subjects:
        name = tag("l")
        stream = subject.send(subject.session(), name, **script)
        streams[subject.name] = (stream, name)
    if direct is not None:
        url, model = direct
        name = tag("l")
        streams["direct"] = (
            EventStream(url, "/api/chat", _chat_body(model, directive(name, **script)), "ndjson"),
            name,
        )
    mux = Mux()
    arrivals: dict[int, list[float]] = {id(s): [] for s, _ in streams.values()}

    def on_events(stream: EventStream, events) -> None:
        for e in events:
            if e.name in ("token", "line") and e.data:
                text = (
                    e.data.get("text") if e.name == "token" else (e.data.get("message") or {}).get("content")
                )
                arrivals[id(stream)].extend([e.at] * (text or "").count(" "))

    for stream, _ in streams.values():
        on_events(stream, stream.events)  # events that came with the response head
        mux.add(stream)
    try:
        mux.run(time.monotonic() + count * PACED_INTERVAL_S + STEP_TIMEOUT_S, on_events)
    finally:
        mux.close()
        for stream, _ in streams.values():
            stream.close()
    latency: dict[str, Cell] = {}
    for who, (stream, name) in streams.items():
        sent = fake.stamps(name)[1 : 1 + count]  # the first write is the response head
        got = arrivals[id(stream)]
        samples = [(g - s) * 1000 for g, s in zip(got, sent, strict=False)] + [None] * (count - len(got))
        latency[who] = Cell.of(samples)
    base = latency.get("direct")
    cells = {who: (c.minus(base) if base and who != "direct" else c) for who, c in latency.items()}
    primary = subjects[0].name
    return Row(
        "Streaming cost",
        "added latency per token at 50 tok/s",
        "ms",
        cells,
        target="p99 ≤ 2 ms",
        holds=judge(cells.get(primary), 2.0),
        ratio=ratio(latency.get("reference"), latency.get(primary), "latency p99 ref/" + primary),
        note=f"{count} tokens each, all streams read at the same time; the direct cell is the latency itself",
    )
