"""Section 5: 128 sessions streaming at 20 tokens/s at once.

One client thread reads every stream through a selector. Half the streams
never end on their own and are the ones stopped; they are opened first. The
other half are opened last and run to their natural end, so every one of
their tokens must arrive, in order. Once all are live, a second thread
times the control routes (``/healthz``, a stop of a session with nothing
running, one prompt too many) and samples the server's memory, then stops
the first half one by one, 20 ms apart, while the rest stream on.
"""

from __future__ import annotations

import threading
import time

from .client import EventStream, Mux, ProtocolError
from .latency import STEP_TIMEOUT_S
from .stats import Cell, Row, Section, judge, ratio
from .streaming import expected_text
from .trials import Subject, tag

INTERVAL_S = 0.05  # 20 tokens/s
ENDLESS = 100_000  # tokens of a stream that is stopped long before it could end
STOP_SPACING_S = 0.02
PROBE_SPACING_S = 0.03
STOP_BOUND_S = 2.0
STOP_P99_MS = 20.0  # the target of a stop while the others stream, to its end event and to the upstream


class _Load:
    """The streams of one run: which are stopped, which run to the end, and what each delivered."""

    def __init__(self, subject: Subject, count: int, tokens: int):
        self.tokens = tokens
        self.streams: list[EventStream] = []
        self.sessions: list[str] = []
        self.tags: list[str] = []
        self.stopped: list[int] = []  # indexes of the endless streams
        self.refused: dict | None = None  # the answer that ended the ramp early (a stream limit)
        self.first: set[int] = set()
        self.index: dict[int, int] = {}
        self.lock = threading.Lock()
        sessions = [subject.session() for _ in range(count)]
        for n, sid in enumerate(sessions):
            endless = n < count // 2
            name = tag("s")
            stream = subject.send(sid, name, tokens=ENDLESS if endless else tokens, interval_s=INTERVAL_S)
            if stream.status != 200:
                self.refused = {"after": len(self.streams), "status": stream.status, "error": stream.error}
                break
            if endless:
                self.stopped.append(len(self.streams))
            self.index[id(stream)] = len(self.streams)
            self.streams.append(stream)
            self.sessions.append(sid)
            self.tags.append(name)
        self.idle_sid = subject.session()

    def on_events(self, stream: EventStream, events) -> None:
        if any(e.name == "token" for e in events):
            with self.lock:
                self.first.add(self.index[id(stream)])

    def all_started(self) -> bool:
        with self.lock:
            return len(self.first) == len(self.streams)


def _timed(subject: Subject, method: str, path: str) -> float | None:
    control = subject.control()
    sent = control.send(method, path)
    status, _ = control.read()
    return (time.monotonic() - sent) * 1000 if status == 200 else None


def _drive(subject: Subject, load: _Load, probes: int, result: dict) -> None:
    """Probe the control routes while every stream is live, then stop the endless half."""
    try:
        deadline = time.monotonic() + STEP_TIMEOUT_S * 2
        while not load.all_started() and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(probes):
            result["health"].append(_timed(subject, "GET", "/healthz"))
            result["stop_idle"].append(_timed(subject, "POST", f"/api/sessions/{load.idle_sid}/stop"))
            stat = subject.stat()
            if stat:
                result["rss_peak_kb"] = max(result["rss_peak_kb"], stat.rss_kb)
            time.sleep(PROBE_SPACING_S)
        extra = subject.send(load.idle_sid, tag("x"), tokens=3)  # one prompt more than the streams
        result["extra"] = (extra.status, (extra.response.head_at - extra.sent_at) * 1000)
        extra.close()
        control = subject.control()
        for i in load.stopped:
            result["stops"][i] = control.send("POST", f"/api/sessions/{load.sessions[i]}/stop")
            control.read()
            time.sleep(STOP_SPACING_S)
    except (OSError, ProtocolError, TimeoutError) as e:
        result["errors"].append(f"driver: {type(e).__name__}: {e}")
    finally:
        subject.close()


def _run(subject: Subject, count: int, seconds: float, probes: int) -> dict:
    before = subject.stat()
    load = _Load(subject, count, int(seconds / INTERVAL_S))
    result: dict = {"health": [], "stop_idle": [], "rss_peak_kb": 0, "stops": {}, "errors": []}
    if load.refused:
        result["errors"].append(
            f"the server refused stream {load.refused['after'] + 1}: {load.refused['error']}"
        )
    mux = Mux()
    for stream in load.streams:
        load.on_events(stream, stream.events)
        mux.add(stream)
    thread = threading.Thread(target=_drive, args=(subject, load, probes, result), name="bench-scale-driver")
    thread.start()
    try:
        mux.run(time.monotonic() + seconds + STEP_TIMEOUT_S * 3 + len(load.streams) * 0.1, load.on_events)
    finally:
        thread.join(STEP_TIMEOUT_S * 4 + probes * 1.0 + count * 1.0)
        mux.close()
        for stream in load.streams:
            stream.close()
    if thread.is_alive():
        raise RuntimeError("the scale driver thread did not finish")
    result["errors"] += [f"stream read: {why}" for _, why in mux.failed]
    result.update(before=before, after=subject.stat(), live=len(load.streams), tokens=load.tokens)
    result.update(_deliveries(subject, load))
    result.update(_stop_times(subject, load, result["stops"], result["errors"]))
    return result


def _deliveries(subject: Subject, load: _Load) -> dict:
    """How many streams got exactly what was sent (the ones run to the end) or an in-order prefix."""
    want = expected_text(ENDLESS if subject.scripted else 0)
    full = expected_text(load.tokens)
    in_order = delivered = 0
    for i, stream in enumerate(load.streams):
        text = stream.text()
        delivered += text.count(" ")
        status = (stream.end() or {}).get("status")
        if i in load.stopped:
            in_order += status == "stopped" and (not subject.scripted or want.startswith(text))
        else:
            in_order += status == "completed" and (not subject.scripted or text == full)
    return {"in_order": in_order, "delivered": delivered}


def _stop_times(subject: Subject, load: _Load, stops: dict, errors: list) -> dict:
    end_ms, close_ms = [], []
    names = [load.tags[i] for i in load.stopped]
    closes = subject.fake.calls(*names, wait_closed_s=STOP_BOUND_S) if subject.fake and names else {}
    for i in load.stopped:
        sent = stops.get(i)
        if sent is None:
            continue  # never stopped: the driver failed, which is reported
        end = load.streams[i].end_event()
        end_ms.append((end.at - sent) * 1000 if end and end.at - sent < STOP_BOUND_S else None)
        call = closes.get(load.tags[i])
        closed = call and call["closed_at"]
        close_ms.append((closed - sent) * 1000 if closed and closed - sent < STOP_BOUND_S else None)
    return {"end_ms": end_ms, "close_ms": close_ms}


def scale(subjects: list[Subject], count: int, seconds: float, probes: int) -> Section:
    section = Section("5", f"Scale: {count} streams at 20 tok/s")
    primary = subjects[0]
    runs = {s.name: _run(s, count, seconds, probes) for s in subjects}
    mine = runs[primary.name]

    def row(measure, unit, key, target="", limit=None, holds=None, p99_ms=None, **kw) -> None:
        if p99_ms is not None:  # the target said and judged from one number
            target, limit = f"p99 ≤ {p99_ms:g} ms", p99_ms
        cells = {name: c for name, r in runs.items() if (c := key(r)) is not None}
        if limit is not None:
            holds = judge(cells.get(primary.name), limit)
        section.rows.append(Row(section.title, measure, unit, cells, target=target, holds=holds, **kw))

    half = count // 2
    row(
        "streams with every token delivered in order",
        "streams",
        lambda r: Cell(value=r["in_order"], text=f"{r['in_order']}/{r['live']}"),
        target="all",
        holds=mine["in_order"] == mine["live"] and not mine["errors"],
        note=f"{count - half} run to the end ({mine['tokens']} tokens each), {half} are stopped",
    )
    stop_cells = {name: Cell.of(r["end_ms"], bound=STOP_BOUND_S * 1000) for name, r in runs.items()}
    row(
        "stop → end event, while the others stream",
        "ms",
        lambda r: Cell.of(r["end_ms"], bound=STOP_BOUND_S * 1000),
        p99_ms=STOP_P99_MS,
        ratio=ratio(stop_cells.get("reference"), stop_cells.get(primary.name), "ref/" + primary.name),
    )
    if primary.fake is not None:
        row(
            "stop → upstream closed, while the others stream",
            "ms",
            lambda r: Cell.of(r["close_ms"], bound=STOP_BOUND_S * 1000),
            p99_ms=STOP_P99_MS,
        )
    row(
        f"prompt {count + 1} while every slot is busy: status, time to answer",
        "ms",
        lambda r: (
            Cell(value=r["extra"][1], text=f"{r['extra'][0]} in {r['extra'][1]:.1f} ms")
            if "extra" in r
            else None
        ),
        target="503 at once",
        holds=mine.get("extra", (None,))[0] == 503,
        note="only Jarvis has a stream limit (JARVIS_MAX_STREAMS=128); the reference starts the stream",
    )
    for key, what in (("health", "GET /healthz"), ("stop_idle", "POST stop (idle session)")):
        row(
            f"{what} while every stream slot is busy",
            "ms",
            lambda r, key=key: Cell.of(r[key], bound=STEP_TIMEOUT_S * 1000),
            target="answered",
            holds=bool(mine[key]) and all(v is not None for v in mine[key]),
        )
    if mine["before"] is not None:
        row(
            "memory per live stream (RSS delta / streams)",
            "KB",
            lambda r: (
                Cell(value=(r["rss_peak_kb"] - r["before"].rss_kb) / r["live"]) if r["before"] else None
            ),
            target="≤ 64 KB",
            limit=64.0,
            note="resident set while all streams are live, minus just before they opened",
        )
        row(
            "server CPU per token at 20 tok/s × streams",
            "µs",
            lambda r: (
                Cell(value=(r["after"].cpu_s - r["before"].cpu_s) / max(1, r["delivered"]) * 1e6)
                if r["before"]
                else None
            ),
            note="includes starting and stopping the streams",
        )
    for name, r in runs.items():
        if r["errors"]:
            section.notes.append(f"{name}: " + "; ".join(r["errors"][:5]))
    return section
