"""Sections 1-3: how fast a new prompt, a Stop and a gone client reach the upstream.

Each trial opens a fresh session, puts its answer in one state (streaming,
stalled, loading), waits a random part of a token interval, then acts and
times what follows: the new prompt's first token, the ``end`` event, and the
moment the fake upstream saw its connection close (its clock is the same
``time.monotonic`` as ours). A state in which one trial takes longer than
half a second (a design that waits out its join timeout, or never closes)
gets fewer trials, run ten at a time; the row says how many.
"""

from __future__ import annotations

import math
import time

from .client import EventStream
from .stats import Cell, Row, Section, ratio, within
from .trials import SHORT, STEP_TIMEOUT_S, Subject, run_trials, tag
from .upstream import directive

SLOW_TRIAL_S = 0.5
SLOW_WORKERS = 10
PLAIN_BOUND_HEARTBEATS = 4  # a plain WSGI host sees a gone client only on a write: allow four


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a - b) * 1000


def _adaptive(subject: Subject, trial, n: int, slow_n: int) -> tuple[list, int, bool]:
    """Run ``trial(i, alone)`` n times; if the first is slow, slow_n times, ten at a time (alone=False)."""
    started = time.monotonic()
    first, failed = run_trials(lambda i: trial(i, True), 1)
    slow = time.monotonic() - started > SLOW_TRIAL_S
    count, workers = (slow_n, SLOW_WORKERS) if slow else (n, 1)
    rest, failed_rest = run_trials(lambda i: trial(i, not slow), max(0, count - 1), workers, subject.close)
    return first + rest, failed + failed_rest, slow  # a failed trial is None


def _in_heartbeats(cell: Cell, heartbeat_s: float) -> str:
    if cell.p50 is None or cell.max is None or not math.isfinite(cell.max):
        return ""
    per = heartbeat_s * 1000
    return f"{cell.p50 / per:.1f} heartbeats at p50, {cell.max / per:.1f} at worst"


def _share(subject: Subject, subjects: list[Subject], n: int) -> int:
    """Trials for ``subject``: n for the server under test, half that for the servers it is compared to."""
    return n if subject is subjects[0] else max(1, n // 2)


def first_token(subject: Subject, sid: str, name: str, script: dict | None = None) -> float:
    """Seconds from sending a prompt to its first token, reading the answer to its end."""
    stream = subject.send(sid, name, **(script or SHORT))
    deadline = stream.sent_at + STEP_TIMEOUT_S
    try:
        first = stream.until(("token", "end"), deadline)
        stream.read_all(deadline)
    finally:
        stream.close()
    if first.name != "token":
        raise TimeoutError(f"no token: {stream.end()}")
    return first.at - stream.sent_at


def direct_first_token(url: str, model: str, name: str) -> float:
    """The same, read from the upstream itself: the floor under every server's number."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": directive(name, **SHORT)}],
        "stream": True,
    }
    stream = EventStream(url, "/api/chat", body, kind="ndjson")
    deadline = stream.sent_at + STEP_TIMEOUT_S
    try:
        first = stream.until(("line",), deadline)
        stream.read_all(deadline)
    finally:
        stream.close()
    return first.at - stream.sent_at


def warm_up(subject: Subject, count: int) -> None:
    """Exercise the whole path first: imports, first-request set-up, the database, the pool."""
    for _ in range(count):
        first_token(subject, subject.session(), tag("w"))


def _beside_reference(
    section: Section,
    measure: str,
    cells: dict[str, Cell],
    primary: str,
    limit_ms: float,
    notes: list[str],
    compared: dict[str, Cell] | None = None,
    what: str = "",
) -> Row:
    """A row of milliseconds that holds when the server under test's p99 is at most ``limit_ms``,
    with the reference's number over its own (of ``compared``, the cells themselves by default)."""
    compared = cells if compared is None else compared
    shown = ratio(compared.get("reference"), compared.get(primary), f"{what}ref/{primary}")
    return within(section.title, measure, "ms", cells, primary, limit_ms, ratio=shown, note="; ".join(notes))


def _trial_counts(fails: int, slow: bool, n: int) -> str:
    parts = []
    if slow:
        many = f"{n} trials, {SLOW_WORKERS} at a time" if n > 1 else "1 trial"
        parts.append(f"{many} (one trial took > {SLOW_TRIAL_S:g} s)")
    if fails:
        parts.append(f"{fails} trials timed out")
    return "; ".join(parts)


def supersede(subjects: list[Subject], direct: tuple[str, str] | None, n: int, slow_n: int) -> Section:
    """Section 1: a prompt sent while the session's previous answer is still live."""
    section = Section("1", "Supersede penalty")
    primary = subjects[0]
    per = {s.name: _supersede_runs(s, _share(s, subjects, n), slow_n) for s in subjects}
    cells = {name: runs["idle"] for name, runs in per.items()}
    if direct is not None:
        url, model = direct
        samples, _ = run_trials(lambda i: direct_first_token(url, model, tag("d")) * 1000, n)
        cells["direct"] = Cell.of(samples, bound=STEP_TIMEOUT_S * 1000)
    section.rows.append(
        Row(
            section.title,
            "time to first token, idle session",
            "ms",
            cells,
            ratio=ratio(cells.get(primary.name), cells.get("direct"), f"{primary.name}/direct"),
        )
    )
    for state in primary.states():
        cells, busy, order, notes = {}, {}, {}, []
        for name, runs in per.items():
            r = runs.get(state)
            if r is None:
                continue
            cells[name] = r["busy"].minus(r["idle"])
            busy[name] = r["busy"]
            order[name] = r["order"]
            notes += [f"{name}: {note}" for note in r["notes"]]
        section.rows.append(
            _beside_reference(
                section,
                f"supersede penalty, old answer {state}",
                cells,
                primary.name,
                10.0,
                notes,
                busy,
                "TTFT p99 ",
            )
        )
        if primary.fake is not None:
            mine = order[primary.name]
            section.rows.append(
                Row(
                    section.title,
                    f"old upstream closed before new opened, {state}",
                    "trials",
                    {name: Cell(value=sum(o), text=f"{sum(o)}/{len(o)}") for name, o in order.items()},
                    target="all",
                    holds=bool(mine) and all(mine),
                    note="the fake checks, as the new call opens, whether the old socket has seen EOF",
                )
            )
    return section


def _supersede_runs(subject: Subject, n: int, slow_n: int) -> dict:
    """Per state: busy TTFT, its idle baseline, and whether the old call had closed first."""
    out: dict = {}
    paired_idle: list[float] = []

    def trial(i: int, alone: bool, state: str):
        # idle and busy alternate, so drift hits both; a trial run among others measures no idle
        idle = first_token(subject, subject.session(), tag("i")) * 1000 if alone else None
        sid, old_tag, old = subject.open_in(state, "o")
        subject.phase()
        new_tag = tag("n")
        new = subject.send(sid, new_tag, **SHORT)
        deadline = new.sent_at + STEP_TIMEOUT_S
        try:
            first = new.until(("token", "end"), deadline)
            new.read_all(deadline)
            old.read_all(deadline)
        finally:
            new.close()
            old.close()
        ttft = (first.at - new.sent_at) * 1000 if first.name == "token" else None
        statuses = ((old.end() or {}).get("status"), (new.end() or {}).get("status"))
        return idle, ttft, old_tag, new_tag, statuses

    for state in subject.states():
        results, fails, slow = _adaptive(
            subject, lambda i, alone, state=state: trial(i, alone, state), n, slow_n
        )
        done = [r for r in results if r is not None]
        idle = [r[0] for r in done if r[0] is not None]
        paired_idle += idle
        overlapping = set(subject.fake.overlaps()) if subject.fake is not None else set()
        notes = [note] if (note := _trial_counts(fails, slow, len(results))) else []
        odd = sum(1 for r in done if r[4] != ("superseded", "completed"))
        if odd:
            notes.append(f"{odd} trials ended other than superseded/completed")
        out[state] = {
            "busy": Cell.of([r and r[1] for r in results], bound=STEP_TIMEOUT_S * 1000),
            "idle": Cell.of(idle) if idle else None,
            "order": [bool(r) and (r[2], r[3]) not in overlapping for r in results],
            "notes": notes,
        }
    if not paired_idle:  # every state was slow: measure the baseline on its own
        paired_idle = [first_token(subject, subject.session(), tag("i")) * 1000 for _ in range(n)]
    pooled = Cell.of(paired_idle)
    for r in out.values():
        r["idle"] = r["idle"] or pooled  # a slow state is judged against the idle trials of the others
    out["idle"] = pooled
    return out


def stop(subjects: list[Subject], n: int, slow_n: int, bound_s: float) -> Section:
    """Section 2: POST stop, timed to the upstream close and to the ``end`` event (waits up to bound_s)."""
    section = Section("2", "Stop")
    primary = subjects[0]
    per: dict[str, dict[str, tuple]] = {}
    for subject in subjects:
        per[subject.name] = {}
        for state in subject.states():

            def trial(i: int, alone: bool, subject=subject, state=state):
                sid, name, old = subject.open_in(state, "p")
                subject.phase()
                control = subject.control()
                sent = control.send("POST", f"/api/sessions/{sid}/stop")
                try:
                    end = old.until(("end",), sent + bound_s).at
                except TimeoutError:
                    end = None
                finally:
                    old.close()
                status, _ = control.read()
                closed = None
                if subject.fake is not None:
                    call = subject.fake.calls(name, wait_closed_s=bound_s)[name]
                    closed = call and call["closed_at"]
                return _ms(closed, sent), _ms(end, sent), status, (old.end() or {}).get("status")

            results, fails, slow = _adaptive(subject, trial, _share(subject, subjects, n), slow_n)
            results = [r or (None, None, None, None) for r in results]
            per[subject.name][state] = (results, _trial_counts(fails, slow, len(results)))
    for state in primary.states():
        for what, index, limit in (("upstream closed", 0, 5.0), ("end event received", 1, 10.0)):
            if index == 0 and primary.fake is None:
                continue
            cells, notes = {}, []
            for subject in subjects:
                if state not in per[subject.name]:
                    continue
                results, note = per[subject.name][state]
                cells[subject.name] = Cell.of([r[index] for r in results], bound=bound_s * 1000)
                if note:
                    notes.append(f"{subject.name}: {note}")
                odd = sum(1 for r in results if r[3] != "stopped")
                if odd and index == 1:
                    notes.append(f"{subject.name}: {odd} answers ended other than stopped")
            section.rows.append(
                _beside_reference(section, f"stop → {what}, {state}", cells, primary.name, limit, notes)
            )
    return section


def disconnect(
    subjects: list[Subject],
    plain: Subject | None,
    n: int,
    slow_n: int,
    heartbeat_s: float,
    bound_s: float,
    ahead: Subject | None = None,
) -> Section:
    """Section 3: the client closes its socket; timed to the upstream close. ``plain`` is wsgi:app
    under python -m waitress, ``ahead`` the same with request lookahead."""
    section = Section("3", "Disconnect")
    primary = subjects[0]
    per: dict[str, dict[str, tuple]] = {}
    for subject in [*subjects, *(s for s in (plain, ahead) if s is not None)]:
        if subject.fake is None:
            continue
        per[subject.name] = {}
        for state in subject.states():
            bound = PLAIN_BOUND_HEARTBEATS * heartbeat_s if subject is plain else bound_s

            def trial(i: int, alone: bool, subject=subject, state=state, bound=bound):
                sid, name, old = subject.open_in(state, "c")
                subject.phase()
                gone = time.monotonic()
                old.close()
                call = subject.fake.calls(name, wait_closed_s=bound)[name]
                return _ms(call and call["closed_at"], gone)

            count = slow_n if subject is plain else max(1, n // 2) if subject is ahead else None
            count = count or _share(subject, subjects, n)
            results, fails, slow = _adaptive(subject, trial, count, slow_n)
            per[subject.name][state] = (results, _trial_counts(fails, slow, len(results)), bound)
    if primary.name not in per:
        section.notes.append("Needs the scripted upstream: the close is seen on the upstream side.")
        return section
    for state in primary.states():
        cells, notes = {}, []
        for subject in subjects:
            if state in per.get(subject.name, {}):
                results, note, bound = per[subject.name][state]
                cells[subject.name] = Cell.of(results, bound=bound * 1000)
                if note:
                    notes.append(f"{subject.name}: {note}")
        section.rows.append(
            _beside_reference(
                section, f"disconnect → upstream closed, {state}", cells, primary.name, 25.0, notes
            )
        )
    heard = f"p99 ≤ JARVIS_HEARTBEAT ({heartbeat_s * 1000:g} ms) + 25 ms"
    for host, how, limit, target in (
        (plain, "plain waitress", heartbeat_s * 1000 + 25, heard),
        (ahead, "plain waitress + lookahead", 25.0, "p99 ≤ 25 ms"),
    ):
        for state in host.states() if host is not None else ():
            results, note, bound = per[host.name][state]
            cell = Cell.of(results, bound=bound * 1000)
            if host is plain:  # it sees a gone client only on a heartbeat's write: say in how many
                note = "; ".join(filter(None, [_in_heartbeats(cell, heartbeat_s), note]))
            section.rows.append(
                within(
                    section.title,
                    f"disconnect → upstream closed, {state}, {how}",
                    "ms",
                    {primary.name: cell},
                    primary.name,
                    limit,
                    target=target,
                    note=note,
                )
            )
    return section
