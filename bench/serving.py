"""Section 15: how fast ``jarvis serve`` lets go of an upstream, one client or many at once.

- Client close → upstream closed, in each state of the answer (streaming, stalled, loading):
  under ``jarvis serve`` the channel's close event ends the answer; with ``--poll-only`` the
  server is run with that event switched off, which is how it was before (a 20 ms poll).
- 64 concurrent Stops: 64 answers stream, 64 clients (one keep-alive connection each, in this
  process) send their Stop at the same moment; timed from the first Stop sent to the last
  upstream connection the fake saw close. ``jarvis serve`` side by side with itself as it was
  before (``python -m bench.serving serve-before``: the socket calls let go of the GIL, the loop
  writes its cancels' log lines and ends each pass's Stops at the usual switch interval) and with
  the loop's Stop switched off (``serve-thread``: the Stop's pool thread ends it), rounds
  alternated so all see the same load.

``python -m bench --sections 15`` runs it; ``python -m bench.serving`` prints it alone.
"""

from __future__ import annotations

import contextlib
import select
import sys
import threading
import time
from pathlib import Path

from .client import Control
from .servers import REPO, ServerProcess, jarvis_command, jarvis_env
from .stats import Cell, Row, Section, judge, ratio
from .trials import STATES, Subject
from .upstream import Fake

CONCURRENT = 64
MAX_STREAMS = 128
BOUND_S = 2.0


def run(workdir: Path, quick: bool) -> Section:
    section = Section("15", "Serving: a client closing, and many Stops at once")
    trials, rounds = (5, 1) if quick else (60, 12)  # quick: a smoke run, each row filled once
    close: dict[str, dict[str, Cell]] = {}
    fake = Fake(str(REPO), str(workdir / "serving-upstream.log"))
    try:
        for variant in ("jarvis serve", "poll only"):
            server = _start(variant, fake.url, workdir)
            subject = Subject(variant, server.url, server.pid, fake)
            try:
                close[variant] = {
                    state: Cell.of([_close_ms(subject, state) for _ in range(trials)], bound=BOUND_S * 1000)
                    for state in STATES
                }
            finally:
                subject.close()
                server.stop()
        stops, stalled = _side_by_side(STOP_VARIANTS, fake, workdir, rounds)
    finally:
        fake.close()
    for state in STATES:
        cells = {variant: by_state[state] for variant, by_state in close.items()}
        section.rows.append(
            Row(
                "15", f"client close → upstream closed, {state}", "ms", cells,
                ratio=ratio(cells["poll only"], cells["jarvis serve"], "poll/event"),
                target="≤ 5 ms p99", holds=judge(cells["jarvis serve"], 5.0),
            )
        )  # fmt: skip
    every = {variant: got[0] for variant, got in stops.items()}
    each = {variant: got[1] for variant, got in stops.items()}
    section.rows += [
        Row(
            "15", f"{CONCURRENT} concurrent Stops → every upstream closed", "ms", every,
            ratio=ratio(every[BEFORE], every["jarvis serve"], "before/now"),
            target="≤ 50 ms p99", holds=judge(every["jarvis serve"], 50.0),
        ),
        Row("15", f"{CONCURRENT} concurrent Stops, each stop → its upstream closed", "ms", each),
        Row(
            "15", f"{CONCURRENT} concurrent Stops, each stop → its answer", "ms",
            {variant: got[2] for variant, got in stops.items()},
        ),
        Row(
            "15", f"{CONCURRENT} concurrent Stops of stalled answers → every upstream closed", "ms", stalled,
            ratio=ratio(stalled[BEFORE], stalled["jarvis serve"], "before/now"),
            target="≤ 50 ms p99", holds=judge(stalled["jarvis serve"], 50.0),
        ),
    ]  # fmt: skip
    section.notes.append(
        f"close rows: {trials} trials per state, from the client's close() to the fake seeing its "
        "connection close; 'poll only' is jarvis serve with the channel's close event switched off "
        f"(the registry's 20 ms poll alone, as before). Stop rows: {rounds} rounds per server; each round "
        f"opens {CONCURRENT} streaming answers (a token every 20 ms), then {CONCURRENT} clients, each on "
        "its own keep-alive connection, send their Stop at one moment; 'every' is from the first Stop sent "
        "to the last upstream close, 'each' is every Stop to its own upstream close, 'its answer' every Stop "
        "to its response's first bytes (noted by one thread polling the sockets; the responses are "
        "parsed after the round, so that the client takes no CPU from the server); the stalled row is "
        "the same with answers that send nothing (three tokens, "
        "then silence): the Stops without the other answers' token traffic. JARVIS_MAX_STREAMS="
        f"{MAX_STREAMS}. '{BEFORE}' is jarvis serve as it was before the changes of round 4 (python -m "
        "bench.serving serve-before): the socket calls that cannot block let go of the GIL, the event "
        "loop writes its cancels' log lines itself, and ends each poll pass's Stops at the usual switch "
        "interval; 'Stop on a thread' is jarvis serve with the event loop's Stop switched off "
        "(serve-thread): a Stop ends its answer once a pool thread runs it. The servers run at once on "
        "one fake and take their rounds in turn, so that all see the same load"
    )
    return section


def _side_by_side(
    variants: tuple[str, ...], fake: Fake, workdir: Path, rounds: int
) -> tuple[dict[str, tuple[Cell, Cell, Cell]], dict[str, Cell]]:
    """The Stop rounds of ``variants``' servers, alternated round by round (streaming, then stalled)."""
    servers: dict[str, ServerProcess] = {}
    subjects: dict[str, Subject] = {}
    controls: dict[str, list[Control]] = {}
    got: dict[tuple[str, str], tuple[list, list, list]] = {
        (v, state): ([], [], []) for v in variants for state in ("streaming", "stalled")
    }
    try:
        for v in variants:
            servers[v] = _start(v, fake.url, workdir)
            subjects[v] = Subject(v, servers[v].url, servers[v].pid, fake)
            controls[v] = [Control(subjects[v].url) for _ in range(CONCURRENT)]
        for state in ("streaming", "stalled"):
            for n in range(rounds):
                turn = variants if n % 2 == 0 else variants[::-1]
                for v in turn:
                    every, each, answered = _stop_round(subjects[v], controls[v], state)
                    into = got[v, state]
                    into[0].append(every)
                    into[1].extend(each)
                    into[2].extend(answered)
    finally:
        for v, server in servers.items():
            for control in controls.get(v, []):
                control.close()
            if v in subjects:
                subjects[v].close()
            server.stop()
    bound = BOUND_S * 1000
    stops = {v: tuple(Cell.of(samples, bound=bound) for samples in got[v, "streaming"]) for v in variants}
    stalled = {v: Cell.of(got[v, "stalled"][0], bound=bound) for v in variants}
    return stops, stalled


BEFORE = "as before (584894b)"
STOP_VARIANTS = ("jarvis serve", BEFORE, "Stop on a thread")
PATCHES = {  # variant -> the patches its server process runs with (bench/serving.py serve-...)
    "jarvis serve": (),
    BEFORE: ("before",),
    "poll only": ("poll",),
    "Stop on a thread": ("thread",),
    "loop without its log line": ("quiet",),
    "loop, each Stop at once": ("atonce",),
}


def _start(variant: str, upstream: str, workdir: Path) -> ServerProcess:
    database = workdir / f"serving-{'-'.join(PATCHES[variant]) or 'plain'}.sqlite3"
    env = jarvis_env(upstream, "tiny", database, JARVIS_MAX_STREAMS=str(MAX_STREAMS))
    patches = PATCHES[variant]
    if patches:
        command = [sys.executable, "-m", "bench.serving", "serve-" + "+".join(patches), "--port", "0"]
    else:
        command = [*jarvis_command(), "serve", "--port", "0"]
    return ServerProcess(f"jarvis serve ({variant})", command, env, workdir)


def _close_ms(subject: Subject, state: str) -> float | None:
    sid, name, stream = subject.open_in(state, "close")
    subject.phase()
    gone = time.monotonic()
    stream.close()
    call = subject.fake.calls(name, wait_closed_s=BOUND_S)[name]
    closed = call and call["closed_at"]
    return (closed - gone) * 1000 if closed else None


def _stop_round(
    subject: Subject, controls: list[Control], state: str
) -> tuple[float | None, list[float | None], list[float | None]]:
    """One round: the time until all upstreams closed; every stop's own time; every stop's answer."""
    opened = [subject.open_in(state, "stop64") for _ in range(CONCURRENT)]
    for control, (sid, _, _) in zip(controls, opened, strict=True):
        control.call("GET", f"/api/sessions/{sid}")  # connected before the Stops
    sent, got = _stop_at_once(controls, [sid for sid, _, _ in opened])
    answered = [(g - s) * 1000 if g else None for g, s in zip(got, sent, strict=True)]
    calls = subject.fake.calls(*(name for _, name, _ in opened), wait_closed_s=BOUND_S)
    closed = [(calls.get(name) or {}).get("closed_at") for _, name, _ in opened]
    first = min(sent)
    every = None if None in closed else (max(closed) - first) * 1000
    each = [(c - s) * 1000 if c else None for c, s in zip(closed, sent, strict=True)]
    for _, _, stream in opened:
        stream.close()
    return every, each, answered


def _stop_at_once(controls: list[Control], sessions: list[str]) -> tuple[list[float], list[float]]:
    """POST stop to every session at the same moment, one client each; returns when each went out
    and when each one's answer began to arrive (0.0: not within the bound).

    The Stops go out from this one thread, one after another on their 64 connections (about
    2 ms from the first to the last): 64 threads released by a barrier took 7-15 ms, contending
    for this process's GIL, and the bench counted that spread as the server's time. One thread
    notes the answers as their sockets turn readable; they are parsed after the round (64 threads
    parsing them as they came took CPU from the server and the fake on two cores)."""
    n = len(sessions)
    got = [0.0] * n
    sockets = {controls[i]._connection().sock.fileno(): i for i in range(n)}

    def note_answers() -> None:
        poller = select.poll()
        for fd in sockets:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + BOUND_S + 10
        left = set(sockets)
        while left and (wait_s := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(wait_s * 1000):
                got[sockets[fd]] = time.monotonic()
                poller.unregister(fd)
                left.discard(fd)

    noter = threading.Thread(target=note_answers, name="stop-answers")
    noter.start()
    sent = [controls[i].send("POST", f"/api/sessions/{sessions[i]}/stop") for i in range(n)]
    noter.join(BOUND_S + 15)
    for control in controls:
        control.read()
    return sent, got


def _serve(argv: list[str], patches: list[str]) -> int:
    from jarvis import cli

    for name in patches:
        PATCH[name]()
    return cli.main(["serve", *argv])


def _no_store_read() -> None:
    from jarvis.store.sessions import Sessions

    Sessions.require = lambda self, session_id, owner=None: None  # the stop route's only store call


def _poll_only() -> None:
    from jarvis.lifecycle.watch import Watcher

    Watcher.client_closed = lambda self, gone=None: None  # the channel's close event reaches nobody


def _stop_on_a_thread() -> None:
    from jarvis.web.server import Server

    Server._stop_check = lambda self: lambda environ, start_response: []  # the loop leaves Stops alone


def _stop_at_once_in_loop() -> None:
    from jarvis.web.server import Server

    def add_task(self, channel) -> None:  # each Stop's answer ends as soon as it is read
        request = channel.requests[0] if channel.requests else None
        if getattr(request, "stoppable", None) is not None:
            self._held.append((channel, request))
            self._stop_held()
        else:
            self._waitress.task_dispatcher.add_task(channel)

    Server._add_task = add_task


def _as_before() -> None:
    from jarvis import gil, log
    from jarvis.web.server import Server

    gil._LIBC = None  # the sockets' own shutdown and recv, which let go of the GIL
    log.deferred = contextlib.contextmanager(lambda: (yield []))  # the loop writes its lines at once
    Server._read_burst = lambda self, poll: None  # each pass's Stops ended at its end
    Server._burst_begins = lambda self: None  # at the usual switch interval


def _quiet_loop() -> None:
    import threading

    from jarvis import log

    event = log.event
    loop = threading.main_thread()  # jarvis serve runs waitress's loop in the main thread

    def quiet(name, *args, **fields):
        if name == "stream_stopped" and threading.current_thread() is loop:
            return
        event(name, *args, **fields)

    log.event = quiet


def _switch() -> None:
    sys.setswitchinterval(0.0005)


PATCH = {
    "nostore": _no_store_read,
    "poll": _poll_only,
    "thread": _stop_on_a_thread,
    "atonce": _stop_at_once_in_loop,
    "before": _as_before,
    "quiet": _quiet_loop,
    "switch": _switch,
}


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1].startswith("serve-"):
        sys.exit(_serve(sys.argv[2:], sys.argv[1].removeprefix("serve-").split("+")))
    import tempfile

    from . import report

    meta = report.Meta(
        command=" ".join(["python -m bench.serving", *sys.argv[1:]]),
        machine=report.machine(),
        software=report.software(),
        revision=report.revision(),
        started=time.strftime("%Y-%m-%d %H:%M %Z"),
        load_start=report.load(),
    )
    with tempfile.TemporaryDirectory(prefix="jarvis-bench-serving-") as tmp:
        began = time.monotonic()
        result = run(Path(tmp), "--quick" in sys.argv)
        result.seconds = meta.seconds = time.monotonic() - began
    meta.load_end = report.load()
    print(report.text([result], meta))
