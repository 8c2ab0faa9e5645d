"""Several processes: Stop and supersede across two ``jarvis serve`` processes sharing one Redis.

Two processes, A and B, share one SQLite file, one redis-server and one fake Ollama. Each trial
starts an answer at A that stalls after two tokens, then sends the Stop or the next prompt either
to A itself or to B; a third process, C, without Redis, gives the single-process numbers of the
same run (answers started, stopped and superseded at C). Times are from just before the request
to the moment the fake saw the upstream socket close (or the next call open). A second reader
attaches to a live answer at the same process or at the other one (through Redis): the time to its
first event, and its lag behind the prompt's reader per token. Redis commands per answer come from
``INFO commandstats`` around uncontended answers.

    python -m bench.processes [--trials N]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from tests.conftest import Api, clean_env, free_port, serve_process, stop_process, wait_for
from tests.fake_ollama import FakeOllama, Script
from tests.redis_server import RedisServer

from . import servers
from .client import BulkStream, EventStream, Mux
from .latency import warm_up
from .stats import Cell
from .streaming import expected_text
from .trials import Subject, directive, tag
from .upstream import Fake

LOAD_TOKENS = 20_000  # a full-speed answer
LOAD_RUNS = 5
LOAD_STREAMS = 128  # per process
LOAD_SECONDS = 6.0  # how long each of them streams
BOUND_S = 2.0  # a close or an open not seen within this counts as "> bound"


def _ms(then: float | None, start: float) -> float | None:
    return None if then is None else (then - start) * 1000


def _stop(fake: FakeOllama, owner: Api, via: Api) -> float | None:
    session = owner.session()
    fake.script(tokens=5, stall_after=2)
    answer = owner.send(session, "stalls")
    answer.until("token")
    call = fake.chat_calls()[-1]
    started = time.monotonic()
    via.stop(session)
    call.wait_closed(BOUND_S)
    answer.end()
    return _ms(call.closed_at, started)


def _supersede(fake: FakeOllama, owner: Api, via: Api) -> tuple[float | None, float | None]:
    session = owner.session()
    fake.push(Script(tokens=5, stall_after=2), Script(tokens=2))
    answer = owner.send(session, "stalls")
    answer.until("token")
    calls = fake.chat_calls()
    old = calls[-1]
    started = time.monotonic()
    second = via.send(session, "next")
    try:
        new = fake.wait_for_calls(len(calls) + 1, BOUND_S)[-1]
    except TimeoutError:
        new = None
    old.wait_closed(BOUND_S)
    answer.end()
    second.end()
    return _ms(old.closed_at, started), _ms(new.opened_at if new else None, started)


def _attach(fake: FakeOllama, owner: Api, via: Api) -> tuple[float | None, list[float]]:
    """A reader attaching at ``via`` to an answer at ``owner``: ms to its first event, and how much
    later than the answer's own reader it got each token (ms)."""
    session = owner.session()
    fake.script(tokens=12, interval_s=0.03)
    answer = owner.send(session, "rejoined")
    answer.until("token")
    already = set(answer.ids)  # the reader gets these replayed: no live lag to compare
    started = time.monotonic()
    reader = via.attach(session)
    reader.until("start")
    first = _ms(time.monotonic(), started)
    seen: dict[str, dict[str, float]] = {"answer": {}, "reader": {}}

    def read(sse, name: str) -> None:
        while (event := sse.next()) is not None:
            if event[0] == "token":
                seen[name][sse.ids[-1]] = time.monotonic()

    pairs = ((answer, "answer"), (reader, "reader"))
    threads = [threading.Thread(target=read, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND_S + 2)
    live = seen["answer"].keys() & seen["reader"].keys() - already
    lag = [(seen["reader"][i] - seen["answer"][i]) * 1000 for i in live]
    return first, lag


def _commands(fake: FakeOllama, redis: RedisServer, api: Api, runs: int) -> dict[str, float]:
    fake.script(tokens=200)
    session = api.session()
    api.send(session, "warm up").end()
    before = redis.commands()
    for _ in range(runs):
        api.send(session, "counted").end()
    after = redis.commands()
    return {k: (after[k] - before.get(k, 0)) / runs for k in after if after[k] != before.get(k, 0)}


def measure(trials: int) -> str:
    rows: list[tuple[str, Cell, Cell, Cell]] = []
    with tempfile.TemporaryDirectory() as tmp, FakeOllama() as fake:
        fake.key = lambda body: "one session at a time"
        redis = RedisServer(free_port(), tmp).start()
        procs = []
        try:
            apis = []
            for name in "abc":  # c: one process alone, without Redis
                env = clean_env(
                    JARVIS_OLLAMA_URL=fake.url, JARVIS_BACKEND="ollama", JARVIS_MODEL="tiny",
                    JARVIS_DATABASE=f"{tmp}/{'alone' if name == 'c' else 'shared'}.sqlite3",
                    JARVIS_INSTANCE_DIR=f"{tmp}/instance-{name}", JARVIS_HEARTBEAT="0.2",
                    **({} if name == "c" else {"JARVIS_REDIS_URL": redis.url}),
                )  # fmt: skip
                proc, api = serve_process(env)
                procs.append(proc)
                apis.append(Api(api.url))
            a, b, c = apis
            for api in (a, b):
                wait_for(lambda api=api: _subscribed(api), timeout=5, what="subscribed")
            ways = (("C", c, c), ("A", a, a), ("B", a, b))  # column, the answer's process, the request's
            stops = {col: [_stop(fake, owner, via) for _ in range(trials)] for col, owner, via in ways}
            rows.append(("Stop → old upstream closed", *(Cell.of(stops[col], BOUND_S) for col in "CAB")))
            sups = {col: [_supersede(fake, owner, via) for _ in range(trials)] for col, owner, via in ways}
            for i, what in enumerate(("prompt → old upstream closed", "prompt → new upstream opened")):
                rows.append((what, *(Cell.of([t[i] for t in sups[col]], BOUND_S) for col in "CAB")))
            overlaps = len(fake.overlaps)
            joins = {
                col: [_attach(fake, owner, via) for _ in range(max(1, trials // 5))]
                for col, owner, via in ways
            }
            rows.append(
                ("attach → first event", *(Cell.of([j[0] for j in joins[col]], BOUND_S) for col in "CAB"))
            )
            rows.append((
                "token at the attached reader − at the prompt's reader",
                *(Cell.of([x for j in joins[col] for x in j[1]], BOUND_S * 1000) for col in "CAB"),
            ))  # fmt: skip
            commands = _commands(fake, redis, a, 10)
        finally:
            for proc in procs:
                stop_process(proc)
            redis.stop()
    lines = [
        "| measure | unit | one process, no Redis | Redis, same process | Redis, other process |",
        "|---|---|---|---|---|",
        *(
            f"| {m} | ms | {alone.show()} | {here.show()} | {there.show()} |"
            for m, alone, here, there in rows
        ),
        f"| upstream calls of one session open at once | trials | | | {overlaps} of {6 * trials} |",
    ]
    spent = ", ".join(f"{k} {v:g}" for k, v in sorted(commands.items()))
    lines += ["", f"- Redis commands per answer (200 tokens, mean of 10): {spent}"]
    return "\n".join(lines)


def load(tokens: int, runs: int, streams: int, stream_s: float) -> str:
    """Throughput per process, alone and as one of two sharing Redis, and ``streams`` streams at
    20 tokens/s in each of two processes at once; against the fake in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fake = Fake(str(servers.REPO), str(work / "upstream.log"))
        redis = RedisServer(free_port(), tmp).start()
        started: list = []
        try:
            for name in ("C", "A", "B"):  # C: one process alone, without Redis
                extra = {"JARVIS_MAX_STREAMS": str(streams)}
                if name != "C":
                    extra["JARVIS_REDIS_URL"] = redis.url
                env = servers.jarvis_env(
                    fake.url, "tiny", work / f"{'alone' if name == 'C' else 'shared'}.sqlite3", **extra
                )
                cmd = [*servers.jarvis_command(), "serve", "--port", "0"]
                started.append(servers.ServerProcess(f"jarvis {name}", cmd, env, work))
            c, a, b = (Subject(p.name, p.url, p.pid, fake) for p in started)
            for subject in (c, a, b):
                warm_up(subject, 5)
            lines = _throughput(c, a, b, tokens, runs)
            lines += _many(a, b, streams, stream_s)
        finally:
            for server in reversed(started):
                server.stop()
            redis.stop()
            fake.close()
    return "\n".join(lines)


def _rate(subject: Subject, tokens: int) -> tuple[float, bool]:
    stream = BulkStream(
        subject.url,
        f"/api/sessions/{subject.session()}/messages",
        {"content": directive(tag("t"), tokens=tokens)},
    )
    return tokens / (stream.done_at - stream.sent_at), stream.text() == expected_text(tokens)


def _throughput(c: Subject, a: Subject, b: Subject, tokens: int, runs: int) -> list[str]:
    """One full-speed answer at a time at C, at A, and at A and B together, interleaved."""
    rates: dict[str, list[float]] = {"C": [], "A": [], "A+B": []}
    wrong = 0
    for _ in range(runs):
        for name, subject in (("C", c), ("A", a)):
            rate, right = _rate(subject, tokens)
            rates[name].append(rate)
            wrong += not right
        both: list = [None, None]

        def one(i: int, subject: Subject, both=both) -> None:
            both[i] = _rate(subject, tokens)

        threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for got in both:
            if got is None:
                wrong += 1
            else:
                rates["A+B"].append(got[0])
                wrong += not got[1]
    med = {k: statistics.median(v) for k, v in rates.items() if v}

    def row(what: str, key: str, target: str = "") -> str:
        return f"| {what} | {med[key]:,.0f} | ×{med[key] / med['C']:.2f} | {target} |"

    return [
        "",
        f"| full speed, {tokens:,} tokens, median of {runs} | tok/s per process | ratio to C | target |",
        "|---|---|---|---|",
        row("one process alone, no Redis (C)", "C"),
        row("one of two processes sharing Redis, the other idle (A)", "A", "≥ 0.95"),
        row("each of two processes sharing Redis, both streaming at once (A+B)", "A+B"),
        f"| answers whose text differed from what was sent | {wrong} of {runs * 4} | | none |",
    ]


def _many(a: Subject, b: Subject, streams: int, seconds: float) -> list[str]:
    """``streams`` sessions streaming at 20 tokens/s in each of two processes at once, read by one
    thread; every answer must arrive whole and in order."""
    tokens = int(seconds / 0.05)
    opened: list[EventStream] = []
    refused = 0
    began = time.monotonic()
    for i in range(streams * 2):
        subject = (a, b)[i % 2]
        stream = subject.send(subject.session(), tag("s"), tokens=tokens, interval_s=0.05)
        if stream.status != 200:
            refused += 1
            stream.close()
            continue
        opened.append(stream)
    ramp = time.monotonic() - began
    mux = Mux()
    for stream in opened:
        mux.add(stream)
    try:
        mux.run(time.monotonic() + seconds + 30, lambda stream, events: None)
    finally:
        mux.close()
        for stream in opened:
            stream.close()
    want = expected_text(tokens)
    whole = sum(1 for s in opened if s.text() == want and (s.end() or {}).get("status") == "completed")
    return [
        "",
        f"- {streams * 2} sessions, {streams} in each of two processes, {tokens} tokens each at 20 tokens/s,"
        f" read by one client thread: {whole} of {streams * 2} delivered every token in order and ended"
        f" `completed`; {refused} refused, {len(mux.failed)} read failures;"
        f" opening them all took {ramp:.1f} s.",
    ]


def _subscribed(api: Api) -> bool:
    return bool(
        requests.get(api.url + "/healthz", headers=api.headers, timeout=2).json().get("coordination_ok")
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.processes", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="trials per row (default: 100)")
    parser.add_argument("--load", action="store_true", help="also throughput per process and 2 × 128 streams")
    args = parser.parse_args(argv)
    began = time.monotonic()
    print(measure(args.trials))
    if args.load:
        print(load(LOAD_TOKENS, LOAD_RUNS, LOAD_STREAMS, LOAD_SECONDS))
    command = " ".join(["python -m bench.processes", *map(shlex.quote, argv)])
    print(f"\n({command}: {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
