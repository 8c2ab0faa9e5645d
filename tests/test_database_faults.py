"""A database that hangs or stays locked: every request that needs it answers 503 `database_unavailable`
within JARVIS_DATABASE_TIMEOUT, and nothing the database does stands between Stop and an answer's end.

PostgreSQL is hung the way the Redis fault test hangs Redis: SIGSTOP on every process of the server
(its kernel still accepts and acknowledges, so only a deadline of Jarvis's own sees it). SQLite is
held by another connection's write transaction (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest
import requests

from jarvis.status import LIVE_STATUSES
from tests import postgres
from tests.conftest import LOCAL_TOKEN, Api, wait_for
from tests.fake_ollama import Script

pytestmark = pytest.mark.slow  # a server of its own, and waits of a database timeout

TIMEOUT_S = 2.0  # JARVIS_DATABASE_TIMEOUT in these tests
SLACK_S = 1.0  # two busy cores: what a 503 may take beyond the timeout
END_S = 1.0  # an answer's end after its Stop, however the database is


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


def _serving_a_long_answer(make_app, make_server, fake, **settings) -> tuple:
    """(app, server, Api): Jarvis under waitress with the database timeout and a final write retried
    for 20 s, the fake scripted for one long answer (8 s of tokens)."""
    app = make_app(database_timeout_s=TIMEOUT_S, database_retry_s=20.0, flush_interval_s=0.1, **settings)
    live = make_server(app)
    fake.push(Script(tokens=400, interval_s=0.02))
    return app, live, Api(live.url)


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
    _, live, api = _serving_a_long_answer(make_app, make_server, fake, database=own_postgres.url())
    sid, sse = api.answering("long")
    with hung(own_postgres):
        began = time.monotonic()
        for _ in range(10):  # checkpoints fall due while the server is stopped: the answer goes on
            sse.until("token")
        assert time.monotonic() - began < END_S  # 0.2 s of tokens: no checkpoint waited for the database
        _stop_ends_at_once(api, sid, sse, live)
        assert fake.wait_for_calls(1)[0].wait_closed(END_S)
    _stored(api, sid, sse.text())


@pytest.mark.timeout(60)
def test_a_locked_sqlite_database_answers_503_and_never_holds_an_answers_end(make_app, make_server, fake):
    # would hang for the busy timeout: the answer's checkpoints and final write wait for the lock
    app, live, api = _serving_a_long_answer(make_app, make_server, fake)
    sid, other = api.session(), api.session()
    sse = api.send(sid, "long")
    sse.until("token")
    with write_locked(app.extensions["jarvis"].config.database_path()):
        _unavailable(*_timed("POST", f"{live.url}/api/sessions/{other}/messages", json={"content": "hi"}))
        _stop_ends_at_once(api, sid, sse, live)
    _stored(api, sid, sse.text())
    assert api.send(other, "after").end() == {"status": "completed"}


@pytest.mark.timeout(60)
def test_an_answer_that_ended_reads_back_ended_while_its_final_write_waits(
    make_app, make_server, fake, monkeypatch
):
    # would be lost to the reader: an answer's end waits at most 250 ms for its final write, and
    # while the database has not taken it the table still says 'streaming' with the text of the
    # last checkpoint: the history read after the end, and the next prompt's context, took its word
    fake.script(Script(tokens=3))
    app = make_app()
    store = app.extensions["jarvis"].store
    taken, save = threading.Event(), store.save_answer

    def slow_to_take_an_end(message_id, content, status, error=None, meta=None):
        if status not in LIVE_STATUSES:
            taken.wait(10)  # the database, slow to take this one write
        save(message_id, content, status, error, meta)

    monkeypatch.setattr(store, "save_answer", slow_to_take_an_end)
    api = Api(make_server(app).url)
    sid = api.session()
    try:
        assert api.send(sid).end()["status"] == "completed"
        answer = api.messages(sid)[-1]
        assert (answer["status"], answer["content"]) == ("completed", "tok0 tok1 tok2 ")
        assert api.send(sid, "again").end()["status"] == "completed"
        sent = fake.chat_calls()[-1].body["messages"]
        assert [m["content"] for m in sent] == ["hello", "tok0 tok1 tok2 ", "again"]
    finally:
        taken.set()
    assert wait_for(lambda: api.messages(sid)[1]["status"] == "completed", timeout=10, what="the final write")


@contextmanager
def _stopped_while_locked(make_app, make_server, fake, caplog):
    """An answer stopped while another connection holds SQLite's write lock, held for the block: its
    final write waits. Yields (the app's Jarvis, the answer's response, its trace id)."""
    caplog.set_level(logging.INFO, logger="jarvis")
    app, live, api = _serving_a_long_answer(make_app, make_server, fake)
    sid = api.session()
    sse = api.send(sid, "long")
    trace = sse.until("start")["trace_id"]
    sse.until("token")
    jarvis = app.extensions["jarvis"]
    with write_locked(jarvis.config.database_path()):
        _stop_ends_at_once(api, sid, sse, live)
        yield jarvis, sse, trace


@pytest.mark.timeout(60)
def test_shutdown_waits_for_an_answers_final_write_until_the_database_takes_it(
    make_app, make_server, fake, caplog
):
    # would be lost: a shutdown that returned without waiting for the writer leaves the answer streaming
    done = threading.Event()
    with _stopped_while_locked(make_app, make_server, fake, caplog) as (jarvis, sse, trace):
        shutdown = threading.Thread(target=lambda: (jarvis.shutdown(15.0), done.set()))
        shutdown.start()
        wait_for(lambda: _logged(caplog, "answer_write_retrying", trace), timeout=10, what="a retry")
        assert not done.is_set()  # shutdown waits for the write
    shutdown.join(10)
    assert done.is_set()
    with sqlite3.connect(jarvis.config.database_path()) as db:
        status, content = db.execute(
            "SELECT status, content FROM messages WHERE trace_id = ? AND role = 'assistant'", (trace,)
        ).fetchone()
    assert status == "stopped" and content == sse.text()


@pytest.mark.timeout(60)
def test_shutdown_gives_up_on_a_final_write_at_its_deadline_and_names_the_answer(
    make_app, make_server, fake, caplog
):
    # would hang: a shutdown that waited for the writer without a deadline
    with _stopped_while_locked(make_app, make_server, fake, caplog) as (jarvis, _, trace):
        began = time.monotonic()
        assert jarvis.shutdown(1.0) == []
        took = time.monotonic() - began
        assert took < 1.0 + 0.5, took
        assert _logged(caplog, "answer_lost", trace) or _logged(caplog, "answer_write_left", trace)


def _logged(caplog, event: str, trace: str) -> bool:
    return any(r.getMessage() == event and r.fields.get("trace_id") == trace for r in caplog.records)


def test_a_stop_without_the_database_signs_in_only_the_credential_that_sent_the_prompt(make_app, fake):
    # the registry's answer to a Stop must give away nothing the database would refuse: not another
    # credential of the machine (the local token, once an account exists), not a cookie without its
    # CSRF header, not another user
    fake.script(Script(load_delay_s=60))
    app = make_app()
    accounts = app.extensions["jarvis"].accounts
    accounts.add("ann", "correct horse battery")
    accounts.add("bob", "correct horse battery")
    bob = {"Authorization": "Bearer " + accounts.create_token("bob")}
    ann = app.test_client()  # it sends the local token too, which means nothing now
    csrf = ann.post("/login", json={"name": "ann", "password": "correct horse battery"}).get_json()[
        "csrf_token"
    ]
    sid = ann.post("/api/sessions", headers={"X-CSRF-Token": csrf}).get_json()["id"]
    answer = ann.post(
        f"/api/sessions/{sid}/messages", json={"content": "x"}, headers={"X-CSRF-Token": csrf}, buffered=False
    )
    try:
        assert answer.status_code == 200
        fake.wait_for_calls(1)
        assert app.test_client().post(f"/api/sessions/{sid}/stop").status_code == 401  # the local token alone
        bare = app.test_client()
        bare.environ_base.pop("HTTP_AUTHORIZATION")
        assert bare.post(f"/api/sessions/{sid}/stop", headers=bob).status_code == 404
        assert ann.post(f"/api/sessions/{sid}/stop").status_code == 403  # the cookie without its CSRF header
        assert fake.chat_calls()[0].closed_at is None
        stopped = ann.post(f"/api/sessions/{sid}/stop", headers={"X-CSRF-Token": csrf})
        assert stopped.get_json() == {"stopped": True}
        assert fake.chat_calls()[0].wait_closed(2)
    finally:
        answer.close()


@pytest.mark.timeout(60)
def test_a_postgres_write_lock_held_elsewhere_answers_503_within_the_timeout(
    postgres_url, make_app, make_server, fake, caplog
):
    # would hang: a prompt's write transaction waits for the advisory write lock for as long as it is held
    import psycopg

    from jarvis.store.engines.postgres import WRITE_LOCK

    app = make_app(database=postgres_url, database_timeout_s=TIMEOUT_S)
    live = make_server(app)
    api = Api(live.url)
    sid = api.session()
    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
        _unavailable(*_timed("POST", f"{live.url}/api/sessions/{sid}/messages", json={"content": "hi"}))
        r, took = _timed("GET", live.url + "/api/sessions")  # a lock is not a server down: reads go on
        assert r.status_code == 200 and took < 1.0, (r.status_code, took)
    assert api.send(sid, "after").end() == {"status": "completed"}
    # the server said so itself: no connection was cut, so the database never counted as down
    assert not [r for r in caplog.records if r.getMessage() == "database_unavailable"]
