"""Section 6: many mixed cycles, then the server's threads, fds and memory against their start.

A cycle is one fresh session and one of: an answer that completes, a new
prompt over a live one, a Stop, a client that hangs up, an upstream that
reports an error. The live answer of a supersede, stop or hang-up is in a
random state (streaming, stalled, loading). A warm-up of the same mix comes
first, so the start figures include what the first requests allocate once.
"""

from __future__ import annotations

import random
import threading
import time

from .latency import STEP_TIMEOUT_S
from .stats import Cell, Row, Section
from .trials import SHORT, Subject, run_trials, tag

KINDS = ("complete", "supersede", "stop", "disconnect", "error")
WEIGHTS = (30, 20, 20, 15, 15)


def _cycle(subject: Subject, rng: random.Random) -> tuple[str, str | None]:
    """Run one random cycle; returns its kind and what went wrong, if anything."""
    kind = rng.choices(KINDS, WEIGHTS)[0]
    state = rng.choice(subject.states())
    deadline = time.monotonic() + STEP_TIMEOUT_S
    if kind in ("complete", "error"):
        script = {"tokens": 5} if kind == "complete" else {"tokens": 5, "error_after": 2}
        stream = subject.send(subject.session(), tag(f"{kind}-"), **script)
        try:
            stream.read_all(deadline)
        finally:
            stream.close()
        end = stream.end() or {}
        if kind == "complete" and (end.get("status") != "completed" or stream.tokens_seen != 5):
            return kind, f"complete ended {end.get('status')} after {stream.tokens_seen} tokens"
        if kind == "error" and (end.get("status") == "completed" or "error" not in end):
            return kind, f"error ended {end}"
        return kind, None
    sid, _, old = subject.open_in(state, f"{kind}-{state}-")
    try:
        if kind == "supersede":
            new = subject.send(sid, tag("new-"), **SHORT)
            try:
                new.read_all(deadline)
                old.read_all(deadline)
            finally:
                new.close()
            pair = ((old.end() or {}).get("status"), (new.end() or {}).get("status"))
            return kind, None if pair == ("superseded", "completed") else f"supersede {state} ended {pair}"
        if kind == "stop":
            subject.control().call("POST", f"/api/sessions/{sid}/stop")
            old.read_all(deadline)
            status = (old.end() or {}).get("status")
            return kind, None if status == "stopped" else f"stop {state} ended {status}"
        return kind, None  # disconnect: the close below is the cycle
    finally:
        old.close()


def _settled(subject: Subject, start, timeout: float):
    """Wait until threads and fds are back to ``start`` (or the timeout); returns the last look."""
    deadline = time.monotonic() + timeout
    if subject.fake is not None:
        subject.fake.wait_idle(timeout)
    while True:
        now = subject.stat()
        if now is None or (now.threads <= start.threads and now.fds <= start.fds):
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def _quiet(subject: Subject, timeout: float = 3.0):
    """Let transient threads (workers, the disconnect watcher) finish; returns a stable look."""
    if subject.fake is not None:
        subject.fake.wait_idle(timeout)
    deadline = time.monotonic() + timeout
    last = subject.stat()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = subject.stat()
        if now is None or (now.threads == last.threads and now.fds == last.fds):
            return now
        last = now
    return last


def _run(subject: Subject, cycles: int, workers: int, warm: int, settle_s: float, budget_s: float) -> dict:
    seeds = random.Random(7)
    rngs = threading.local()
    errors: list[str] = []
    kinds: dict[str, int] = {}
    lock = threading.Lock()
    rss: list[tuple[int, int]] = []  # (cycles so far, resident KB), a few times during the run

    def one(i: int) -> bool:
        rng = getattr(rngs, "rng", None)
        if rng is None:
            with lock:
                rng = rngs.rng = random.Random(seeds.random())
        kind, wrong = _cycle(subject, rng)
        with lock:
            kinds[kind] = kinds.get(kind, 0) + 1
            if wrong:
                errors.append(wrong)
            sample = rss and subject.pid and sum(kinds.values()) >= rss[-1][0] + cycles // 8
        if sample:
            rss.append((sum(kinds.values()), subject.stat().rss_kb))
        return True

    run_trials(one, warm, workers=workers, done=subject.close)
    start = _quiet(subject)
    kinds.clear()
    errors.clear()
    if subject.fake is not None:
        subject.fake.forget()
    if start is not None:
        rss.append((0, start.rss_kb))
    began = time.monotonic()
    results, failures = run_trials(one, cycles, workers=workers, done=subject.close, until=began + budget_s)
    took = time.monotonic() - began
    ran = sum(1 for r in results if r) + failures
    end = _settled(subject, start, settle_s)
    overlaps = subject.fake.overlaps() if subject.fake is not None else None
    return {
        "overlaps": overlaps,
        "rss": rss,
        "start": start,
        "end": end,
        "took": took,
        "warm": warm,
        "kinds": kinds,
        "errors": errors,
        "failures": failures,
        "cycles": ran,
        "planned": cycles,
        "workers": workers,
    }


def endurance(
    subjects: list[Subject], cycles: dict[str, int], workers: dict[str, int], settle_s: float, budget_s: float
) -> Section:
    """Section 6: up to ``cycles`` per server (or ``budget_s`` of them), then ``settle_s`` to settle."""
    section = Section("6", "Endurance")
    primary = subjects[0]
    runs = {
        s.name: _run(s, cycles[s.name], workers[s.name], max(20, cycles[s.name] // 100), settle_s, budget_s)
        for s in subjects
    }
    mine = runs[primary.name]

    def cells(fn) -> dict[str, Cell]:
        return {name: fn(r) for name, r in runs.items() if r["start"] is not None}

    def _count(r) -> Cell:
        of = f" of {r['planned']:,}" if r["cycles"] < r["planned"] else ""
        return Cell(
            value=r["cycles"],
            text=f"{r['cycles']:,}{of} in {r['took']:.0f} s "
            f"({r['cycles'] / r['took']:.0f}/s, {r['workers']} at a time)",
        )

    section.rows.append(Row(section.title, "mixed cycles", "cycles", {n: _count(r) for n, r in runs.items()}))
    wrong = {n: Cell(value=len(r["errors"]) + r["failures"]) for n, r in runs.items()}
    section.rows.append(
        Row(
            section.title,
            "cycles that ended wrongly or timed out",
            "cycles",
            wrong,
            target="0",
            holds=wrong[primary.name].value == 0,
            digits=0,
        )
    )
    if mine["overlaps"] is not None:
        section.rows.append(
            Row(
                section.title,
                "upstream calls that opened while their session's previous call was open",
                "calls",
                {n: Cell(value=len(r["overlaps"])) for n, r in runs.items()},
                target="0",
                holds=not mine["overlaps"],
                digits=0,
            )
        )
    if mine["start"] is not None:
        for what, attr in (("threads", "threads"), ("open fds", "fds")):
            section.rows.append(
                Row(
                    section.title,
                    f"{what}: start → end",
                    "count",
                    cells(
                        lambda r, attr=attr: Cell(
                            value=getattr(r["end"], attr),
                            text=f"{getattr(r['start'], attr)} → {getattr(r['end'], attr)}",
                        )
                    ),
                    target="back to start",
                    holds=getattr(mine["end"], attr) <= getattr(mine["start"], attr),
                )
            )
        growth = cells(lambda r: Cell(value=(r["end"].rss_kb - r["start"].rss_kb) / 1024))
        section.rows.append(
            Row(
                section.title,
                "memory growth (RSS end − start)",
                "MB",
                growth,
                target="≤ 2 MB",
                holds=growth[primary.name].value <= 2.0,
                digits=2,
            )
        )
    for name, r in runs.items():
        mix = ", ".join(f"{k} {v}" for k, v in sorted(r["kinds"].items()))
        section.notes.append(f"{name}: after {r['warm']} warm-up cycles; mix: {mix}")
        if len(r["rss"]) > 2:
            trail = ", ".join(f"{kb / 1024:.1f}" for _, kb in r["rss"])
            section.notes.append(f"{name}: resident MB every ~{r['planned'] // 8:,} cycles: {trail}")
        if r["cycles"] < r["planned"]:
            section.notes.append(f"{name}: stopped at the {budget_s:.0f} s budget of this section")
        if r["errors"]:
            section.notes.append(f"{name}: " + "; ".join(sorted(set(r["errors"]))[:5]))
        if r["overlaps"]:
            pairs = ", ".join(f"{old} then {new}" for old, new in r["overlaps"][:3])
            section.notes.append(f"{name}: overlapping upstream calls, e.g. {pairs}")
    return section
