"""Bad input at the boundary: NUL bytes, control characters in titles, imports built to balloon,
sign-in hashing on demand, and the local sign-in cookie after sign-out.

The tests that need no file of their own run again on PostgreSQL (tests/test_postgres.py), where
a NUL byte in any text used to reach the database and fail as a 500.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading

import pytest
import requests

import jarvis.web.accounts
from tests.conftest import HTTP_TIMEOUT, LOCAL_TOKEN, wait_for

pytestmark = pytest.mark.timeout(60)
PASSWORD = "correct horse battery"


def _session(client) -> str:
    return client.post("/api/sessions").get_json()["id"]


def _bad_request(r) -> None:
    assert r.status_code == 400, (r.status_code, r.get_data(as_text=True)[:300])
    assert r.mimetype == "application/json"
    assert r.get_json()["error"]["code"] == "bad_request"


def _export(**fields) -> dict:
    return {"format": "jarvis.chat", "title": "t", "messages": [], **fields}


# a NUL byte anywhere in text answers 400, before any database sees it

NUL_REQUESTS = {
    "search": lambda c, sid: c.get("/api/search", query_string={"q": "a\x00b"}),
    "query name": lambda c, sid: c.get("/api/sessions", query_string={"a\x00": "1"}),
    "session id": lambda c, sid: c.get("/api/sessions/a%00b"),
    "session id to delete": lambda c, sid: c.delete("/api/sessions/a%00b"),
    "prompt": lambda c, sid: c.post(f"/api/sessions/{sid}/messages", json={"content": "a\x00b"}),
    "model": lambda c, sid: c.post(f"/api/sessions/{sid}/messages", json={"content": "a", "model": "\x00"}),
    "rename": lambda c, sid: c.patch(f"/api/sessions/{sid}", json={"title": "a\x00b"}),
    "system prompt": lambda c, sid: c.patch(f"/api/sessions/{sid}", json={"settings": {"system": "a\x00"}}),
    "import title": lambda c, sid: c.post("/api/sessions/import", json=_export(title="a\x00b")),
    "import content": lambda c, sid: c.post(
        "/api/sessions/import", json=_export(messages=[{"role": "user", "content": "a\x00b"}])
    ),
    "import key": lambda c, sid: c.post("/api/sessions/import", json=_export(meta={"a\x00": 1})),
    "import raw bytes": lambda c, sid: c.post(
        "/api/sessions/import", data=json.dumps(_export()).encode("utf-16"), content_type="application/json"
    ),
    "openai prompt": lambda c, sid: c.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "a\x00"}]}
    ),
}


@pytest.mark.parametrize("where", list(NUL_REQUESTS))
def test_a_nul_byte_in_any_text_answers_400(app, client, where):
    sid = _session(client)
    r = NUL_REQUESTS[where](client, sid)
    if where == "openai prompt":  # the OpenAI dialect answers in OpenAI's error shape
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_request", r.get_json()
    else:
        _bad_request(r)
    assert "\x00" not in json.dumps(client.get("/api/sessions").get_json())
    assert app.extensions["jarvis"].registry.live() == []


@pytest.mark.parametrize("body", ["json", "form"])
def test_a_nul_byte_in_a_sign_in_name_answers_400(app, body):
    app.extensions["jarvis"].accounts.add("ann", PASSWORD)
    client = app.test_client()
    fields = {"name": "ann\x00", "password": PASSWORD}
    r = client.post("/login", json=fields) if body == "json" else client.post("/login", data=fields)
    _bad_request(r)
    assert client.post("/login", json={"name": "ann", "password": PASSWORD}).status_code == 200


# control characters never reach a title


def test_an_imported_title_and_model_lose_their_control_characters(client):
    body = _export(
        title="Trip\r\nINFO forged\x1b[2J\tto\x7f Lisbon\x85",
        messages=[
            {"role": "user", "content": "keep\r\nmy\x1b text", "status": "sent"},
            {"role": "assistant", "content": "ok", "status": "completed", "model": "tiny\r\n\x1b[31m"},
        ],
    )
    r = client.post("/api/sessions/import", json=body)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["title"] == "Trip INFO forged [2J to Lisbon"
    session = client.get(f"/api/sessions/{r.get_json()['id']}").get_json()
    assert session["title"] == "Trip INFO forged [2J to Lisbon"
    assert [m["content"] for m in session["messages"]] == ["keep\r\nmy\x1b text", "ok"]  # text is kept
    assert session["messages"][1]["model"] == "tiny [31m"


def test_a_rename_loses_its_control_characters(client):
    sid = _session(client)
    r = client.patch(f"/api/sessions/{sid}", json={"title": "a\x1b[2Jb\x07\u2028c"})
    assert r.status_code == 200 and r.get_json()["title"] == "a [2Jb c"
    _bad_request(client.patch(f"/api/sessions/{sid}", json={"title": "\x1b\x07"}))  # nothing left


# an import holds a bounded number of values, however it is built


@pytest.mark.parametrize(
    "raw",
    [
        b'{"format": "jarvis.chat", "messages": [], "x": [' + b"[]," * 600_000 + b"[]]}",
        b'{"format": "jarvis.chat", "messages": [], "x": [' + b"{}," * 600_000 + b"{}]}",
        b'{"format": "jarvis.chat", "messages": [], "x": {' + b'"":0,' * 600_000 + b'"":0}}',
        b'{"format": "jarvis.chat", "messages": [], "x": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    ],
    ids=["empty lists", "empty objects", "keys", "deep"],
)
def test_an_import_built_to_balloon_is_refused_before_it_is_parsed(client, raw):
    r = client.post("/api/sessions/import", data=raw, content_type="application/json")
    _bad_request(r)
    assert client.get("/api/sessions").get_json()["sessions"] == []


def test_the_value_count_is_not_fooled_by_strings(client):
    # commas, brackets and escaped quotes inside strings are text, not values
    text = 'a,b:[{"\\' * 20_000
    body = _export(messages=[{"role": "user", "content": text, "status": "sent"}])
    r = client.post("/api/sessions/import", json=body)
    assert r.status_code == 201, r.get_json()
    # and a string that never ends is a bad request, found in one pass
    raw = b'{"format": "jarvis.chat", "messages": [], "x": "' + b'\\"' * 500_000
    _bad_request(client.post("/api/sessions/import", data=raw, content_type="application/json"))


def test_one_import_at_a_time_per_user_and_a_few_in_the_process(make_app, make_server):
    app = make_app(max_imports=2)
    accounts = app.extensions["jarvis"].accounts
    auth = {}
    for name in ("ann", "bob", "cat"):
        accounts.add(name, PASSWORD)
        auth[name] = {"Authorization": "Bearer " + accounts.create_token(name)}
    store = app.extensions["jarvis"].store
    held, release = threading.Semaphore(0), threading.Event()
    entered = []
    real = store.import_session

    def slow(*args, **kwargs):  # the first two imports stay in the store until released
        if len(entered) < 2:
            entered.append(args[2])
            held.release()
            release.wait(10)
        return real(*args, **kwargs)

    store.import_session = slow
    url = make_server(app).url + "/api/sessions/import"

    def send(name):
        return requests.post(url, json=_export(), headers=auth[name], timeout=HTTP_TIMEOUT)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = [pool.submit(send, "ann")]
        try:
            assert held.acquire(timeout=5)
            first.append(pool.submit(send, "bob"))
            assert held.acquire(timeout=5)
            again = send("ann")
            assert again.status_code == 429, again.text
            assert again.json()["error"]["code"] == "import_running"
            assert int(again.headers["Retry-After"]) >= 1
            third = send("cat")
            assert third.status_code == 503, third.text
            assert third.json()["error"]["code"] == "import_busy"
            assert int(third.headers["Retry-After"]) >= 1
        finally:
            release.set()
        assert [f.result(10).status_code for f in first] == [201, 201]
    assert send("ann").status_code == 201 and send("cat").status_code == 201


# password hashing on demand is bounded


def test_one_address_rotating_names_gets_a_bounded_number_of_hashes(app):
    app.extensions["jarvis"].accounts.add("ann", PASSWORD)
    client = app.test_client()
    codes = [
        client.post("/login", json={"name": f"user{i}", "password": "wrong-password"}).status_code
        for i in range(40)
    ]
    assert codes.count(401) == 30 and codes.count(429) == 10, codes
    # another address is not refused for it
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "127.0.0.2"
    assert other.post("/login", json={"name": "ann", "password": PASSWORD}).status_code == 200


def test_sign_ins_from_many_addresses_hash_a_few_at_a_time(make_app, make_server, monkeypatch):
    app = make_app(trusted_proxies="127.0.0.1", login_hashes=2, login_wait_s=0.3)
    app.extensions["jarvis"].accounts.add("ann", PASSWORD)
    lock = threading.Lock()
    running, most = [0], [0]
    real = jarvis.web.accounts.check_password_hash

    def counted(hashed, password):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            threading.Event().wait(0.05)  # a slower machine's hash: the requests overlap
            return real(hashed, password)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(jarvis.web.accounts, "check_password_hash", counted)
    url = make_server(app, threads=16).url + "/login"

    def attempt(i):
        r = requests.post(
            url,
            json={"name": f"user{i}", "password": "wrong-password"},
            headers={"X-Forwarded-For": f"192.0.2.{i + 1}"},
            timeout=HTTP_TIMEOUT,
        )
        return r.status_code, r.json()["error"]["code"], r.headers.get("Retry-After")

    with concurrent.futures.ThreadPoolExecutor(14) as pool:
        answers = list(pool.map(attempt, range(40)))
    assert most[0] <= 2, f"{most[0]} password hashes ran at once"
    assert {(s, c) for s, c, _ in answers} <= {(401, "unauthorized"), (503, "sign_in_busy")}, answers
    assert all(after for s, _, after in answers if s == 503)
    assert any(s == 401 for s, _, _ in answers)


# signing out in local mode ends the cookie, copies included


def test_a_local_sign_out_ends_a_copied_cookie(app):
    browser = app.test_client()
    browser.environ_base.pop("HTTP_AUTHORIZATION")
    assert browser.get(f"/?token={LOCAL_TOKEN}").status_code == 302
    copied = browser.get_cookie("jarvis_session").value
    assert browser.get("/api/sessions").status_code == 200
    r = browser.post("/logout", headers={"Origin": "http://localhost", "Accept": "application/json"})
    assert r.status_code == 200 and r.get_json() == {"signed_out": True}
    thief = app.test_client()
    thief.environ_base.pop("HTTP_AUTHORIZATION")
    thief.set_cookie("jarvis_session", copied)
    assert thief.get("/api/sessions").status_code == 401
    # the printed address signs in again, and the local token still works for scripts
    assert browser.get(f"/?token={LOCAL_TOKEN}").status_code == 302
    assert browser.get("/api/sessions").status_code == 200
    assert app.test_client().get("/api/sessions").status_code == 200


def test_a_local_sign_out_reaches_another_app_on_the_same_instance_folder(make_app):
    first, second = make_app(), make_app()
    browser = first.test_client()
    browser.environ_base.pop("HTTP_AUTHORIZATION")
    browser.get(f"/?token={LOCAL_TOKEN}")
    copied = browser.get_cookie("jarvis_session").value
    elsewhere = second.test_client()
    elsewhere.environ_base.pop("HTTP_AUTHORIZATION")
    elsewhere.set_cookie("jarvis_session", copied)
    assert elsewhere.get("/api/sessions").status_code == 200
    browser.post("/logout", headers={"Origin": "http://localhost"})
    wait_for(lambda: elsewhere.get("/api/sessions").status_code == 401, timeout=2, what="the sign-out")
