"""Crash safety and the database: kill -9 mid-answer, concurrent writers, a full or read-only file."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from jarvis.store import Store
from tests.conftest import HTTP_TIMEOUT, Api, clean_env, serve_process, stop_process, wait_for
from tests.fake_ollama import Script


def _serve(fake, db: str) -> tuple[subprocess.Popen, Api]:
    return serve_process(
        clean_env(
            JARVIS_OLLAMA_URL=fake.url, JARVIS_MODEL="tiny", JARVIS_BACKEND="ollama", JARVIS_DATABASE=db
        )
    )


@pytest.mark.slow  # a server process of its own
@pytest.mark.timeout(60)
def test_kill_9_mid_answer_keeps_the_prompt_and_all_but_the_last_second(fake, tmp_path):
    fake.script(Script(tokens=400, interval_s=0.01))
    db = str(tmp_path / "crash.sqlite3")
    proc, api = _serve(fake, db)
    try:
        sid = api.session()
        sse = api.send(sid, "survive this")
        received: list[tuple[float, str]] = []
        text = ""
        while time.monotonic() - (received[0][0] if received else time.monotonic()) < 2.5:
            name, data = sse.next()
            if name == "token":
                text += data["text"]
                received.append((time.monotonic(), text))
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
    sse.close()

    proc, api = _serve(fake, db)  # a restart on the same database
    try:
        user, answer = api.messages(sid)
        assert user["content"] == "survive this"
        assert answer["status"] == "interrupted"
        assert text.startswith(answer["content"])
        shown_a_second_before = max((t for at, t in received if at <= killed_at - 1.0), key=len, default="")
        assert len(answer["content"]) >= len(shown_a_second_before)
    finally:
        stop_process(proc)


def test_concurrent_writers_share_the_database(tmp_path):
    store = Store(str(tmp_path / "w.sqlite3"))
    sid = store.create_session()["id"]
    errors = []

    def writer(i):
        try:
            for j in range(40):
                _, answer = store.add_exchange(sid, f"p{i}-{j}", f"t{i}", "m")
                store.save_answer(answer, "x" * j, "streaming")
                store.save_answer(answer, "x" * j, "completed")
        except Exception as e:  # noqa: BLE001  collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    messages = store.get_session(sid)["messages"]
    assert len(messages) == 8 * 40 * 2 and {m["status"] for m in messages} == {"sent", "completed"}


def _limit_writes(monkeypatch, store: Store, pragma: str) -> None:
    """Make every connection of ``store`` refuse writes, as a full disk or a read-only file does."""
    connect = store.connect

    class _Limited:
        def __init__(self):
            self.inner = connect()

        def __enter__(self):
            db = self.inner.__enter__()
            if pragma == "full":
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                db.execute(f"PRAGMA max_page_count = {pages}")
            else:
                db.execute("PRAGMA query_only = ON")
            return db

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    monkeypatch.setattr(store, "connect", _Limited)


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_a_database_that_refuses_writes_gives_a_clear_error_not_a_hang(app, monkeypatch, kind):
    store = app.extensions["jarvis"].store
    client = app.test_client()
    sid = client.post("/api/sessions").get_json()["id"]
    _limit_writes(monkeypatch, store, kind)
    began = time.monotonic()
    r = client.post("/api/sessions")
    if kind == "full":  # a tiny row may still fit in the last page
        r = client.post(f"/api/sessions/{sid}/messages", json={"content": "x" * 20000})
    assert r.status_code == 500 and r.get_json()["error"]["code"] == "store_error"
    assert time.monotonic() - began < 2
    assert app.extensions["jarvis"].registry.live() == []


def test_a_failing_final_save_still_ends_the_stream_and_frees_the_slot(
    api, jarvis_server, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="jarvis")
    jarvis_server.fake.script(Script(tokens=50, interval_s=0.01))
    store = jarvis_server.app.extensions["jarvis"].store
    sid = api.session()
    sse = api.send(sid, "x")
    sse.until("token")
    _limit_writes(monkeypatch, store, "read-only")
    assert sse.end()["status"] == "completed"
    wait_for(lambda: jarvis_server.app.extensions["jarvis"].registry.live() == [], what="slot released")
    assert any(r.getMessage() == "store_error" for r in caplog.records)
    assert requests.get(api.url + "/healthz", timeout=HTTP_TIMEOUT).status_code == 200


def test_the_sqlite_default_never_imports_psycopg(tmp_path):
    code = (
        "import sys; from jarvis.store import Store; "
        f"Store({str(tmp_path / 'h.sqlite3')!r}).close(); print('psycopg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "False"
