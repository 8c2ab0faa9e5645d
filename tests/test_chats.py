"""The everyday chat features of the API: rename, empty chats, search, export and import, 404s."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
import requests

from jarvis.store import Store
from jarvis.store.engines.sqlite import SEARCH_SCHEMA
from jarvis.store.sessions import EMPTY_CHAT_S
from tests.conftest import HTTP_TIMEOUT

pytestmark = pytest.mark.timeout(30)
PASSWORD = "correct horse battery"


def store_of(app) -> Store:
    return app.extensions["jarvis"].store


def chat(app, client, *exchanges: tuple[str, str, str], headers=None) -> str:
    """A session holding the given (prompt, answer, status) exchanges, written as a stream writes them."""
    sid = client.post("/api/sessions", headers=headers).get_json()["id"]
    for prompt, answer, status in exchanges:
        _, answer_id = store_of(app).add_exchange(sid, prompt, "t" * 16, "tiny")
        store_of(app).save_answer(answer_id, answer, status)
    return sid


def two_users(app) -> tuple[dict, dict]:
    accounts = app.extensions["jarvis"].accounts
    accounts.add("ann", PASSWORD)
    accounts.add("bob", PASSWORD)
    return tuple({"Authorization": "Bearer " + accounts.create_token(n)} for n in ("ann", "bob"))


# rename


def test_rename_sets_a_one_line_title_that_the_list_shows(app, client):
    sid = chat(app, client, ("hello there", "hi", "completed"))
    r = client.patch(f"/api/sessions/{sid}", json={"title": "  Trip\n to   Lisbon "})
    assert r.status_code == 200 and r.get_json()["title"] == "Trip to Lisbon"
    assert [s["title"] for s in client.get("/api/sessions").get_json()["sessions"]] == ["Trip to Lisbon"]
    # a later prompt keeps the title someone chose
    store_of(app).add_exchange(sid, "another prompt", "t" * 16, "tiny")
    assert client.get(f"/api/sessions/{sid}").get_json()["title"] == "Trip to Lisbon"


@pytest.mark.parametrize("title", ["", "   ", None, 7, "x" * 201])
def test_rename_refuses_an_empty_or_long_title(app, client, title):
    sid = chat(app, client)
    r = client.patch(f"/api/sessions/{sid}", json={"title": title})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_request"


def test_rename_of_another_users_chat_is_not_found(app, client):
    ann, bob = two_users(app)
    sid = chat(app, client, headers=ann)
    r = client.patch(f"/api/sessions/{sid}", json={"title": "mine now"}, headers=bob)
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/sessions/{sid}", headers=ann).get_json()["title"] == ""


# empty chats


def test_an_empty_chat_leaves_the_list_after_a_while_and_a_used_one_stays(app, client):
    empty = chat(app, client)
    used = chat(app, client, ("hi", "hello", "completed"))
    listed = {s["id"] for s in store_of(app).list_sessions()}
    assert listed == {empty, used}  # a fresh "New chat" is shown
    later = time.time() + EMPTY_CHAT_S + 1
    assert [s["id"] for s in store_of(app).list_sessions(now=later)] == [used]
    assert client.get(f"/api/sessions/{empty}").status_code == 200  # still there to write in


# search


def test_search_finds_words_in_answers_prompts_and_titles_of_the_owner_only(app, client):
    ann, bob = two_users(app)
    soup = chat(app, client, ("a recipe please", "Simmer the tomatoes slowly.", "completed"), headers=ann)
    named = chat(app, client, ("hi", "hello", "completed"), headers=ann)
    client.patch(f"/api/sessions/{named}", json={"title": "Tomato garden"}, headers=ann)
    chat(app, client, ("tomatoes?", "tomatoes!", "completed"), headers=bob)

    found = client.get("/api/search?q=tomato", headers=ann).get_json()["sessions"]
    assert {s["id"] for s in found} == {soup, named}
    snippet = next(s["snippet"] for s in found if s["id"] == soup)
    assert "tomatoes" in snippet
    assert client.get("/api/search?q=recipe", headers=ann).get_json()["sessions"][0]["id"] == soup


def test_search_treats_its_query_as_words_not_syntax(app, client):
    chat(app, client, ('say "NEAR" OR AND(', "fine", "completed"))
    for q in ['"', "NEAR(", "AND", "*", "a:b", "'); DROP TABLE messages; --"]:
        r = client.get("/api/search", query_string={"q": q})
        assert r.status_code == 200, (q, r.get_json())
    assert len(client.get("/api/search?q=near").get_json()["sessions"]) == 1
    assert client.get("/api/search?q=").get_json()["sessions"] == []


def test_an_answer_is_searchable_once_it_ends_and_gone_with_its_chat(app, client):
    sid = client.post("/api/sessions").get_json()["id"]
    _, answer = store_of(app).add_exchange(sid, "question", "t" * 16, "tiny")
    store_of(app).save_answer(answer, "partial zebra", "streaming")
    assert client.get("/api/search?q=zebra").get_json()["sessions"] == []
    store_of(app).save_answer(answer, "whole zebra answer", "stopped")
    assert [s["id"] for s in client.get("/api/search?q=zebra").get_json()["sessions"]] == [sid]
    store_of(app).save_answer(answer, "whole zebra answer, edited", "stopped")  # an ended answer rewritten
    with store_of(app).connect() as db:
        db.execute("UPDATE messages SET created_at = 5")
        db.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)")
    found = client.get("/api/search?q=edited").get_json()["sessions"]
    assert found[0]["snippet"] == "whole zebra answer, edited"
    assert client.delete(f"/api/sessions/{sid}").status_code == 200
    assert client.get("/api/search?q=zebra").get_json()["sessions"] == []
    with store_of(app).connect() as db:
        db.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)")


def test_a_database_from_before_search_is_indexed_at_start(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    store = Store(path)
    sid = store.create_session()["id"]
    _, answer = store.add_exchange(sid, "about otters", "t" * 16, "tiny")
    store.save_answer(answer, "otters hold hands", "completed")
    store.close()
    with sqlite3.connect(path) as db:  # as an older Jarvis left it: no index, no triggers
        for name in ("messages_fts_insert", "messages_fts_delete", "messages_fts_update"):
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE messages_fts")
    assert "messages_fts" in SEARCH_SCHEMA
    store = Store(path)
    try:
        assert [s["id"] for s in store.search("otters")] == [sid]
    finally:
        store.close()


# export and import


def test_export_as_markdown_and_json_downloads_with_the_title_as_name(app, client):
    sid = chat(app, client, ("Plan a trip", "Go **north**.", "completed"), ("more", "cut sh", "stopped"))
    md = client.get(f"/api/sessions/{sid}/export?format=md")
    assert md.status_code == 200 and md.mimetype == "text/markdown"
    assert md.headers["Content-Disposition"] == 'attachment; filename="Plan-a-trip.md"'
    text = md.get_data(as_text=True)
    assert text.startswith("# Plan a trip\n") and "Go **north**." in text and "(stopped)" in text
    js = client.get(f"/api/sessions/{sid}/export?format=json")
    assert js.headers["Content-Disposition"] == 'attachment; filename="Plan-a-trip.json"'
    assert [m["status"] for m in js.get_json()["messages"]] == ["sent", "completed", "sent", "stopped"]
    assert client.get(f"/api/sessions/{sid}/export?format=pdf").status_code == 400


def test_import_of_another_users_export_belongs_to_the_caller(app, client):
    ann, bob = two_users(app)
    sid = chat(app, client, ("hi", "hello", "completed"), headers=ann)
    exported = client.get(f"/api/sessions/{sid}/export", headers=ann).get_json()
    assert client.get(f"/api/sessions/{sid}/export", headers=bob).status_code == 404
    r = client.post("/api/sessions/import", json=exported, headers=bob)
    assert r.status_code == 201
    listed = client.get("/api/sessions", headers=bob).get_json()["sessions"]
    assert [s["id"] for s in listed] == [r.get_json()["id"]]


def test_an_answer_live_when_exported_is_imported_as_interrupted(app, client):
    body = {
        "format": "jarvis.chat",
        "title": "t",
        "messages": [
            {"role": "user", "content": "q", "status": "streaming"},
            {"role": "assistant", "content": "half", "status": "streaming"},
        ],
    }
    sid = client.post("/api/sessions/import", json=body).get_json()["id"]
    stored = client.get(f"/api/sessions/{sid}").get_json()["messages"]
    assert [m["status"] for m in stored] == ["sent", "interrupted"]
    assert app.extensions["jarvis"].registry.live() == []


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"title": "no format", "messages": []},
        {"format": "jarvis.chat", "messages": "no"},
        {"format": "jarvis.chat", "messages": [{"role": "system", "content": "x", "status": "completed"}]},
        {"format": "jarvis.chat", "messages": [{"role": "user", "content": 5}]},
        {"format": "jarvis.chat", "messages": [{"role": "assistant", "content": "x", "status": "great"}]},
        {"format": "jarvis.chat", "messages": [{"role": "user", "content": "x" * 200_001}]},
        {"format": "jarvis.chat", "title": "x" * 201, "messages": []},
    ],
)
def test_import_refuses_what_an_export_would_not_hold(client, body):
    r = client.post("/api/sessions/import", json=body)
    assert r.status_code == 400, r.get_json()
    assert client.get("/api/sessions").get_json()["sessions"] == []


def test_import_bounds_the_body_before_reading_it(client):
    r = client.post(
        "/api/sessions/import", data=b"{" + b" " * (17 * 1024 * 1024), content_type="application/json"
    )
    assert r.status_code == 413


def test_a_streamed_chat_survives_an_export_and_import_round_trip(api, fake):
    fake.script(tokens=["Hello", " there", "!"])
    sid = api.session()
    assert api.send(sid, "greet me").end()["status"] == "completed"
    exported = requests.get(
        f"{api.url}/api/sessions/{sid}/export?format=json", headers=api.headers, timeout=HTTP_TIMEOUT
    )
    r = requests.post(
        f"{api.url}/api/sessions/import",
        data=exported.content,
        headers={**api.headers, "Content-Type": "application/json"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 201, r.text
    keys = ("role", "content", "status", "model", "created_at")
    before = [{k: m[k] for k in keys} for m in api.messages(sid)]
    after = [{k: m[k] for k in keys} for m in api.messages(r.json()["id"])]
    assert after == before and before[1]["content"] == "Hello there!"
    assert json.loads(exported.content)["title"] == "greet me"


# pages that do not exist


def test_a_browser_gets_a_page_for_a_missing_path_and_the_apis_answer_json(client):
    html = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    page = client.get("/nope", headers=html)
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "Page not found" in page.get_data(as_text=True)
    for path in ("/api/nope", "/v1/nope", "/api/sessions/x/nope"):
        r = client.get(path, headers=html)
        assert r.status_code == 404 and r.mimetype == "application/json", path
    assert client.get("/nope").mimetype == "application/json"  # curl and scripts: JSON
