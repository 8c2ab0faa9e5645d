"""Several processes: Stop and supersede across two ``jarvis serve`` processes sharing one Redis.

Two processes, A and B, share one SQLite file, one redis-server and one fake Ollama. Each trial
starts an answer at A that stalls after two tokens, then sends the Stop or the next prompt either
to A itself or to B; a third process, C, without Redis, gives the single-process numbers of the
same run (answers started, stopped and superseded at C). Times are from just before the request
to the moment the fake saw the upstream socket close (or the next call open). Redis commands per
answer come from ``INFO commandstats`` around uncontended answers.

    python -m bench.processes [--trials N]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time

import requests

from tests.conftest import Api, clean_env, free_port, serve_process, stop_process, wait_for
from tests.fake_ollama import FakeOllama, Script
from tests.redis_server import RedisServer

from .stats import Cell

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


def _subscribed(api: Api) -> bool:
    return bool(
        requests.get(api.url + "/healthz", headers=api.headers, timeout=2).json().get("coordination_ok")
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.processes", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="trials per row (default: 100)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    print(measure(args.trials))
    command = " ".join(["python -m bench.processes", *map(shlex.quote, argv)])
    print(f"\n({command}: {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
