"""A database that hangs or stays locked: every request that needs it answers 503 `database_unavailable`
within JARVIS_DATABASE_TIMEOUT, and nothing the database does stands between Stop and an answer's end.

PostgreSQL is hung the way the Redis fault test hangs Redis: SIGSTOP on every process of the server
(its kernel still accepts and acknowledges, so only a deadline of Jarvis's own sees it). SQLite is
held by another connection's write transaction (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from contextlib import contextmanager

import pytest
import requests

from tests import postgres
from tests.conftest import LOCAL_TOKEN, Api, wait_for
from tests.fake_ollama import Script

pytestmark = pytest.mark.slow  # a server of its own, and waits of a database timeout

TIMEOUT_S = 2.0  # JARVIS_DATABASE_TIMEOUT in these tests
SLACK_S = 1.0  # two busy cores: what a 503 may take beyond the timeout
END_S = 1.0  # an answer's end after its Stop, however the database is


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of the test's own, which it may stop and start."""
    why = postgres.missing()
    if why:
        pytest.skip(why)
    server = postgres.PostgresServer().start()
    yield server
    server.stop("immediate", missing_ok=True)
    server.remove()


def _server_pids(server: postgres.PostgresServer) -> list[int]:
    """The postmaster and every process it started (a backend per connection)."""
    with open(os.path.join(server.data, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
            pids.append(int(entry))
    return pids


@contextmanager
def hung(server: postgres.PostgresServer):
    """PostgreSQL stopped (SIGSTOP) for the block: it accepts, and answers nothing."""
    pids = _server_pids(server)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@contextmanager
def write_locked(path: str):
    """Another connection holds SQLite's write lock for the block."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


def _timed(method: str, url: str, **kwargs) -> tuple[requests.Response, float]:
    started = time.monotonic()
    r = requests.request(
        method, url, headers={"Authorization": f"Bearer {LOCAL_TOKEN}"}, timeout=(2, 10), **kwargs
    )
    return r, time.monotonic() - started


def _unavailable(r: requests.Response, took: float) -> None:
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
    assert took < TIMEOUT_S + SLACK_S, took


def _stop_ends_at_once(api: Api, sid: str, sse, live) -> None:
    """Stop the session's live answer: its end event and its slot come at once."""
    started = time.monotonic()
    assert api.stop(sid) == {"stopped": True}
    assert sse.end()["status"] == "stopped"
    took = time.monotonic() - started
    assert took < END_S, took
    wait_for(lambda: live.app.extensions["jarvis"].registry.live() == [], timeout=END_S, what="slot freed")


def _stored(api: Api, sid: str, text: str) -> dict:
    """Once the database is back, the stopped answer is stored with its status and its whole text."""

    def landed():
        answer = api.messages(sid)[-1]
        return answer if answer["status"] != "streaming" else None

    answer = wait_for(landed, timeout=10, interval=0.05, what="the final write")
    assert answer["status"] == "stopped" and answer["content"] == text and text
    return answer


@pytest.mark.timeout(60)
def test_a_hung_postgres_answers_503_within_the_database_timeout(own_postgres, make_app, make_server, fake):
    # would hang: every request waits on a socket that the stopped server's kernel keeps open
    app = make_app(database=own_postgres.url(), database_timeout_s=TIMEOUT_S)
    live = make_server(app)
    api = Api(live.url)
    sid = api.session()
    with hung(own_postgres):
        _unavailable(*_timed("GET", live.url + "/api/sessions"))
        _unavailable(*_timed("POST", f"{live.url}/api/sessions/{sid}/messages", json={"content": "hi"}))
    wait_for(lambda: _timed("GET", live.url + "/api/sessions")[0].ok, timeout=10, what="the database back")
    assert api.send(sid, "after").end() == {"status": "completed"}


@pytest.mark.timeout(60)
def test_stop_while_postgres_hangs_ends_the_answer_at_once_and_stores_it_once_back(
    own_postgres, make_app, make_server, fake
):
    # would hang: Stop's own database calls, then the answer's checkpoint and final write in its end
    app = make_app(
        database=own_postgres.url(), database_timeout_s=TIMEOUT_S, database_retry_s=20.0, flush_interval_s=0.1
    )
    live = make_server(app)
    api = Api(live.url)
    fake.push(Script(tokens=400, interval_s=0.02))
    sid = api.session()
    sse = api.send(sid, "long")
    sse.until("token")
    with hung(own_postgres):
        for _ in range(10):  # checkpoints fall due while the server is stopped: the answer goes on
            sse.until("token")
        _stop_ends_at_once(api, sid, sse, live)
        assert fake.wait_for_calls(1)[0].wait_closed(END_S)
    _stored(api, sid, sse.text())


@pytest.mark.timeout(60)
def test_a_locked_sqlite_database_answers_503_and_never_holds_an_answers_end(make_app, make_server, fake):
    # would hang for the busy timeout: the answer's checkpoints and final write wait for the lock
    app = make_app(database_timeout_s=TIMEOUT_S, database_retry_s=20.0, flush_interval_s=0.1)
    live = make_server(app)
    api = Api(live.url)
    fake.push(Script(tokens=400, interval_s=0.02))
    sid, other = api.session(), api.session()
    sse = api.send(sid, "long")
    sse.until("token")
    with write_locked(app.extensions["jarvis"].config.database_path()):
        _unavailable(*_timed("POST", f"{live.url}/api/sessions/{other}/messages", json={"content": "hi"}))
        _stop_ends_at_once(api, sid, sse, live)
    _stored(api, sid, sse.text())
    assert api.send(other, "after").end() == {"status": "completed"}
