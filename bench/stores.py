"""History engines: the same requests against ``jarvis serve`` on SQLite and on PostgreSQL.

Two processes, one per engine, share one fake Ollama; PostgreSQL is a fresh cluster on loopback
(tests/postgres.py). Each trial sends a prompt in a new session and times, from just before the
request, the ``start`` event (the prompt and the empty answer stored) and the ``end`` event of a
three-token answer (its final write done), then reads the chat back. Last, PostgreSQL is stopped
and new prompts are timed to their 503.

    python -m bench.stores [--trials N]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time

import requests

from tests.conftest import HTTP_TIMEOUT, Api, clean_env, serve_process, stop_process
from tests.fake_ollama import FakeOllama
from tests.postgres import PostgresServer, missing

from .stats import Cell

ROWS = ("prompt → start (prompt stored)", "prompt → end (3 tokens)", "read a chat")


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


def _trial(api: Api) -> tuple[float, float, float]:
    session = api.session()
    started = time.monotonic()
    answer = api.send(session, "a prompt to store")
    answer.until("start")
    stored = _ms(started)
    answer.end()
    ended = _ms(started)
    started = time.monotonic()
    api.messages(session)
    return stored, ended, _ms(started)


def _refused(api: Api, session: str) -> float:
    started = time.monotonic()
    r = requests.post(
        f"{api.url}/api/sessions/{session}/messages", json={"content": "x"}, headers=api.headers,
        timeout=HTTP_TIMEOUT,
    )  # fmt: skip
    took = _ms(started)
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
    return took


def measure(trials: int) -> str:
    why = missing()
    if why:
        return f"skipped: {why}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FakeOllama() as fake:
        fake.script(tokens=3)
        pg = PostgresServer().start()
        procs = []
        try:
            apis = {}
            for name, database in (("SQLite", f"{tmp}/bench.sqlite3"), ("PostgreSQL", pg.url())):
                env = clean_env(
                    JARVIS_OLLAMA_URL=fake.url, JARVIS_BACKEND="ollama", JARVIS_MODEL="tiny",
                    JARVIS_DATABASE=database, JARVIS_INSTANCE_DIR=f"{tmp}/instance-{name}",
                )  # fmt: skip
                proc, api = serve_process(env)
                procs.append(proc)
                apis[name] = Api(api.url)
            results = {name: [_trial(api) for _ in range(trials)] for name, api in apis.items()}
            for i, what in enumerate(ROWS):
                rows.append((what, *(Cell.of([r[i] for r in results[name]]) for name in apis)))
            session = apis["PostgreSQL"].session()
            pg.stop("fast")
            refused = [_refused(apis["PostgreSQL"], session) for _ in range(trials)]
        finally:
            for proc in procs:
                stop_process(proc)
            pg.stop("immediate", missing_ok=True)
            pg.remove()
    lines = [
        "| measure | unit | SQLite | PostgreSQL |",
        "|---|---|---|---|",
        *(f"| {m} | ms | {lite.show()} | {pg_cell.show()} |" for m, lite, pg_cell in rows),
        f"| PostgreSQL stopped: new prompt → 503 | ms | | {Cell.of(refused).show()} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.stores", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="trials per row (default: 100)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    print(measure(args.trials))
    command = " ".join(["python -m bench.stores", *map(shlex.quote, argv)])
    print(f"\n({command}: {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
