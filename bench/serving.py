"""Section 15: how fast ``jarvis serve`` lets go of an upstream, one client or many at once.

- Client close → upstream closed, in each state of the answer (streaming, stalled, loading):
  under ``jarvis serve`` the channel's close event ends the answer; with ``--poll-only`` the
  server is run with that event switched off, which is how it was before (a 20 ms poll).
- 64 concurrent Stops: 64 answers stream, 64 clients (one keep-alive connection each, in this
  process) send their Stop at the same moment; timed from the first Stop sent to the last
  upstream connection the fake saw close. Run once against ``jarvis serve`` and once against it
  with the stop route's store read stubbed out (``python -m bench.serving serve-nostore``), to
  tell the store's share from the rest.

``python -m bench --sections 15`` runs it; ``python -m bench.serving`` prints it alone.
"""

from __future__ import annotations

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
    stops: dict[str, tuple[Cell, Cell, Cell]] = {}
    stalled: dict[str, Cell] = {}
    fake = Fake(str(REPO), str(workdir / "serving-upstream.log"))
    try:
        for variant in ("jarvis serve", "poll only", "no store read"):
            server = _start(variant, fake.url, workdir)
            subject = Subject(variant, server.url, server.pid, fake)
            try:
                if variant != "no store read":
                    close[variant] = {
                        state: Cell.of(
                            [_close_ms(subject, state) for _ in range(trials)], bound=BOUND_S * 1000
                        )
                        for state in STATES
                    }
                if variant != "poll only":
                    stops[variant] = _stops(subject, rounds)
                if variant == "jarvis serve":  # no token traffic: what the Stops cost alone
                    stalled[variant] = _stops(subject, rounds, "stalled")[0]
            finally:
                subject.close()
                server.stop()
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
            ratio=ratio(every["jarvis serve"], every["no store read"], "store/none"),
            target="≤ 50 ms p99", holds=judge(every["jarvis serve"], 50.0),
        ),
        Row("15", f"{CONCURRENT} concurrent Stops, each stop → its upstream closed", "ms", each),
        Row(
            "15", f"{CONCURRENT} concurrent Stops, each stop → its answer", "ms",
            {variant: got[2] for variant, got in stops.items()},
        ),
        Row("15", f"{CONCURRENT} concurrent Stops of stalled answers → every upstream closed", "ms", stalled),
    ]  # fmt: skip
    section.notes.append(
        f"close rows: {trials} trials per state, from the client's close() to the fake seeing its "
        "connection close; 'poll only' is jarvis serve with the channel's close event switched off "
        f"(the registry's 20 ms poll alone, as before). Stop rows: {rounds} rounds; each round opens "
        f"{CONCURRENT} streaming answers (a token every 20 ms), then {CONCURRENT} clients, each on its "
        "own keep-alive connection, send their Stop at one moment; 'every' is from the first Stop sent "
        "to the last upstream close, 'each' is every Stop to its own upstream close, 'its answer' every Stop "
        "to its response's first bytes (noted by one thread polling the sockets; the responses are "
        "parsed after the round, so that the client takes no CPU from the server); the stalled row is "
        "the same with answers that send nothing (three tokens, "
        "then silence): the Stops without the other answers' token traffic. JARVIS_MAX_STREAMS="
        f"{MAX_STREAMS}; 'no store read' stubs Sessions.require, the stop route's store call, in "
        "the server process (python -m bench.serving serve-nostore); a Stop of a live answer no longer "
        "reads the store, so that column is a second run of the same code"
    )
    return section


PATCHES = {  # variant -> the patches its server process runs with (bench/serving.py serve-...)
    "jarvis serve": (),
    "poll only": ("poll",),
    "no store read": ("nostore",),
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


def _stops(subject: Subject, rounds: int, state: str = "streaming") -> tuple[Cell, Cell, Cell]:
    """Per round: the time until all upstreams closed; every stop's own time; every stop's answer."""
    every: list[float | None] = []
    each: list[float | None] = []
    answered: list[float | None] = []
    controls = [Control(subject.url) for _ in range(CONCURRENT)]
    try:
        for _ in range(rounds):
            opened = [subject.open_in(state, "stop64") for _ in range(CONCURRENT)]
            for control, (sid, _, _) in zip(controls, opened, strict=True):
                control.call("GET", f"/api/sessions/{sid}")  # connected before the Stops
            sent, got = _stop_at_once(controls, [sid for sid, _, _ in opened])
            answered += [(g - s) * 1000 if g else None for g, s in zip(got, sent, strict=True)]
            calls = subject.fake.calls(*(name for _, name, _ in opened), wait_closed_s=BOUND_S)
            closed = [(calls.get(name) or {}).get("closed_at") for _, name, _ in opened]
            first = min(sent)
            every.append(None if None in closed else (max(closed) - first) * 1000)
            each += [(c - s) * 1000 if c else None for c, s in zip(closed, sent, strict=True)]
            for _, _, stream in opened:
                stream.close()
    finally:
        for control in controls:
            control.close()
    bound = BOUND_S * 1000
    return Cell.of(every, bound=bound), Cell.of(each, bound=bound), Cell.of(answered, bound=bound)


def _stop_at_once(controls: list[Control], sessions: list[str]) -> tuple[list[float], list[float]]:
    """POST stop to every session at the same moment, one client each; returns when each went out
    and when each one's answer began to arrive (0.0: not within the bound).

    One thread notes the answers as their sockets turn readable; they are parsed after the round.
    64 threads parsing them as they came took CPU from the server and the fake on two cores: the
    last upstream closed about 40 ms later, and the bench measured itself."""
    n = len(sessions)
    sent = [0.0] * n
    got = [0.0] * n
    go = threading.Barrier(n + 1)
    sockets = {controls[i]._connection().sock.fileno(): i for i in range(n)}

    def stop(i: int) -> None:
        go.wait(10)
        sent[i] = controls[i].send("POST", f"/api/sessions/{sessions[i]}/stop")

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
    threads = [threading.Thread(target=stop, args=(i,), name=f"stop-{i}") for i in range(n)]
    for t in threads:
        t.start()
    go.wait(10)
    for t in threads:
        t.join(15)
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


def _switch() -> None:
    sys.setswitchinterval(0.0005)


PATCH = {"nostore": _no_store_read, "poll": _poll_only, "switch": _switch}


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
