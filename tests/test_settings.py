"""A chat's own settings (system prompt, temperature, answer length) and what an answer says
before its first token: stored, checked, carried by export and import, and seen at the fake."""

from __future__ import annotations

import sqlite3

import pytest
import requests

from jarvis import sse
from jarvis.events import Progress
from jarvis.store import Store
from tests.conftest import HTTP_TIMEOUT, both_upstreams

pytestmark = pytest.mark.timeout(30)

SETTINGS = {"system": "You are a pirate. Answer in one line.", "temperature": 0.3, "max_tokens": 64}


def patch(api, sid: str, body) -> requests.Response:
    return requests.patch(
        f"{api.url}/api/sessions/{sid}", json=body, headers=api.headers, timeout=HTTP_TIMEOUT
    )


def session(api, sid: str) -> dict:
    r = requests.get(f"{api.url}/api/sessions/{sid}", headers=api.headers, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def test_settings_are_stored_with_the_chat_and_a_null_clears_them(client):
    sid = client.post("/api/sessions").get_json()["id"]
    assert client.get(f"/api/sessions/{sid}").get_json()["settings"] == {}
    r = client.patch(f"/api/sessions/{sid}", json={"settings": SETTINGS})
    assert r.status_code == 200 and r.get_json()["settings"] == SETTINGS
    assert client.get(f"/api/sessions/{sid}").get_json()["settings"] == SETTINGS
    # fields not named stay; a field set to null goes
    r = client.patch(f"/api/sessions/{sid}", json={"settings": {"temperature": 1, "max_tokens": None}})
    assert r.get_json()["settings"] == {"system": SETTINGS["system"], "temperature": 1}
    r = client.patch(f"/api/sessions/{sid}", json={"title": "Pirate talk", "settings": {"system": "  "}})
    assert r.get_json()["settings"] == {"temperature": 1} and r.get_json()["title"] == "Pirate talk"
    r = client.patch(f"/api/sessions/{sid}", json={"settings": None})
    assert r.get_json()["settings"] == {} and client.get(f"/api/sessions/{sid}").get_json()["settings"] == {}


@pytest.mark.parametrize(
    "settings",
    [
        "warm",
        {"temperature": -0.1},
        {"temperature": 2.5},
        {"temperature": "hot"},
        {"temperature": True},
        {"max_tokens": 0},
        {"max_tokens": 1.5},
        {"max_tokens": 40000},
        {"system": 7},
        {"system": "x" * 8001},
        {"top_k": 3},
    ],
)
def test_bad_settings_are_refused_and_change_nothing(client, settings):
    sid = client.post("/api/sessions").get_json()["id"]
    client.patch(f"/api/sessions/{sid}", json={"settings": {"temperature": 0.5}})
    r = client.patch(f"/api/sessions/{sid}", json={"title": "changed", "settings": settings})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_request"
    kept = client.get(f"/api/sessions/{sid}").get_json()
    assert kept["settings"] == {"temperature": 0.5} and kept["title"] == ""


def test_a_patch_without_title_or_settings_is_refused(client):
    sid = client.post("/api/sessions").get_json()["id"]
    r = client.patch(f"/api/sessions/{sid}", json={"colour": "red"})
    assert r.status_code == 400


def test_settings_of_another_users_chat_are_not_found(app, client):
    accounts = app.extensions["jarvis"].accounts
    accounts.add("ann", "correct horse battery")
    accounts.add("bob", "correct horse battery")
    ann, bob = ({"Authorization": "Bearer " + accounts.create_token(n)} for n in ("ann", "bob"))
    sid = client.post("/api/sessions", headers=ann).get_json()["id"]
    r = client.patch(f"/api/sessions/{sid}", json={"settings": SETTINGS}, headers=bob)
    assert r.status_code == 404
    assert client.get(f"/api/sessions/{sid}", headers=ann).get_json()["settings"] == {}


def test_a_database_from_before_settings_gets_the_column(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    with sqlite3.connect(path) as db:  # the sessions table as it was
        db.execute(
            "CREATE TABLE sessions (id TEXT PRIMARY KEY, owner INTEGER, title TEXT NOT NULL DEFAULT '',"
            " created_at REAL NOT NULL, updated_at REAL NOT NULL)"
        )
        db.execute("INSERT INTO sessions VALUES ('old', NULL, 'Before', 1.0, 1.0)")
    db.close()
    store = Store(path)
    try:
        assert store.get_session("old")["settings"] == {}
        store.set_settings("old", {"temperature": 0.1})
        assert store.settings("old") == {"temperature": 0.1}
    finally:
        store.close()


@both_upstreams
def test_chat_settings_reach_the_upstream_request(api, fake):
    fake.script(tokens=["Arr"])
    sid = api.session()
    assert patch(api, sid, {"settings": SETTINGS}).status_code == 200
    assert api.send(sid, "hello").end()["status"] == "completed"
    assert api.send(sid, "again").end()["status"] == "completed"
    first, second = fake.wait_for_calls(2)
    for call in (first, second):  # every prompt of the chat, not only the first
        assert call.body["messages"][0] == {"role": "system", "content": SETTINGS["system"]}
    assert [m["role"] for m in second.body["messages"]] == ["system", "user", "assistant", "user"]
    if fake.kind == "ollama":
        assert second.body["options"] == {"temperature": 0.3, "num_predict": 64}
    else:
        assert (second.body["temperature"], second.body["max_tokens"]) == (0.3, 64)
    # the system prompt is sent, not stored as a message of the chat
    assert [m["role"] for m in api.messages(sid)] == ["user", "assistant", "user", "assistant"]


@both_upstreams
def test_a_chat_without_settings_sends_the_backends_defaults(api, fake):
    fake.script(tokens=["Hi"])
    sid = api.session()
    api.send(sid, "hello").end()
    body = fake.wait_for_calls(1)[0].body
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert "options" not in body and "temperature" not in body and "max_tokens" not in body


def test_export_and_import_carry_the_settings(api, fake):
    fake.script(tokens=["Arr"])
    sid = api.session()
    patch(api, sid, {"settings": SETTINGS})
    api.send(sid, "hello").end()
    exported = requests.get(
        f"{api.url}/api/sessions/{sid}/export?format=json", headers=api.headers, timeout=HTTP_TIMEOUT
    )
    assert exported.json()["settings"] == SETTINGS
    r = requests.post(
        f"{api.url}/api/sessions/import", json=exported.json(), headers=api.headers, timeout=HTTP_TIMEOUT
    )
    assert r.status_code == 201, r.text
    assert session(api, r.json()["id"])["settings"] == SETTINGS
    markdown = requests.get(
        f"{api.url}/api/sessions/{sid}/export?format=md", headers=api.headers, timeout=HTTP_TIMEOUT
    ).text
    assert "> You are a pirate." in markdown and "temperature 0.3, max_tokens 64" in markdown
    bad = {**exported.json(), "settings": {"temperature": 9}}
    r = requests.post(f"{api.url}/api/sessions/import", json=bad, headers=api.headers, timeout=HTTP_TIMEOUT)
    assert r.status_code == 400


@both_upstreams
def test_an_http_backend_says_it_waits_for_the_model_before_the_first_token(api, fake):
    fake.script(tokens=["Hi"], load_delay_s=0.3)
    sid = api.session()
    stream = api.send(sid, "hello")
    assert stream.next()[0] == "start"
    assert stream.next() == ("status", {"state": "waiting"})  # while the fake still loads
    assert fake.wait_for_calls(1)[0].tokens_sent == 0
    assert stream.end()["status"] == "completed" and stream.text() == "Hi"


def test_progress_is_framed_with_the_fields_it_has():
    frame = sse.SSEFramer().frame
    assert b'data: {"state":"reading","tokens":812}' in frame(Progress("reading", tokens=812))
    assert b'data: {"state":"queued","position":2}' in frame(Progress("queued", position=2))
    assert b'event: status\ndata: {"state":"loading"}' in frame(Progress("loading"))


def test_the_stored_answer_and_the_end_say_why_an_answer_was_cut(api, fake):
    fake.script(tokens=3, done_reason="length")
    sid = api.session()
    stream = api.send(sid, "a long story")
    assert stream.end()["status"] == "length"
    meta = stream.end_meta()
    assert (
        meta["usage"] == {"prompt_tokens": 7, "completion_tokens": 3} and "first_token_ms" in meta["timing"]
    )
    assert api.messages(sid)[-1]["meta"] == meta


def test_a_regenerated_or_edited_answer_is_asked_with_the_chats_settings(api, fake):
    # every route that starts an answer builds it in one place: none may skip the settings
    from tests.test_versions import regenerate

    fake.script(tokens=["Arr"])
    sid = api.session()
    patch(api, sid, {"settings": SETTINGS})
    api.send(sid, "hello").end()
    answer = api.messages(sid)[-1]
    assert regenerate(api, sid, answer["id"]).end()["status"] == "completed"
    assert api.send(sid, "hello, edited", parent_id=None).end()["status"] == "completed"
    for call in fake.wait_for_calls(3)[1:]:
        assert call.body["messages"][0] == {"role": "system", "content": SETTINGS["system"]}
        assert call.body["options"] == {"temperature": 0.3, "num_predict": 64}
