"""Versions: regenerate an answer, edit and resend a prompt, switch between the versions; nothing
is overwritten."""

from __future__ import annotations

import sqlite3

import pytest
import requests

from jarvis.store import Store
from tests.conftest import HTTP_TIMEOUT, SSE
from tests.fake_ollama import Script
from tests.test_chats import PASSWORD, chat, store_of

pytestmark = pytest.mark.timeout(30)


def regenerate(api, sid: str, answer_id: int, body: dict | None = None) -> SSE:
    """Regenerate; without ``body`` the request has none, as from curl."""
    r = requests.post(
        f"{api.url}/api/sessions/{sid}/messages/{answer_id}/regenerate",
        json=body,
        headers=api.headers,
        stream=True,
        timeout=HTTP_TIMEOUT,
    )
    return SSE(r)


def show(api, sid: str, message_id, headers=None) -> requests.Response:
    return requests.post(
        f"{api.url}/api/sessions/{sid}/leaf",
        json={"message_id": message_id},
        headers=headers or api.headers,
        timeout=HTTP_TIMEOUT,
    )


def shown(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages]


# the tree in the store


def test_an_old_database_becomes_a_tree_with_each_message_after_the_one_before(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    store = Store(path)
    sid = store.create_session()["id"]
    other = store.create_session()["id"]
    for prompt in ("one", "two"):
        _, answer = store.add_exchange(sid, prompt, "t" * 16, "tiny")
        store.save_answer(answer, prompt.upper(), "completed")
        store.add_exchange(other, "elsewhere " + prompt, "t" * 16, "tiny")  # interleaved ids
    store.close()
    with sqlite3.connect(path) as db:  # as an older Jarvis left it: no parents, no leaf
        db.execute("ALTER TABLE messages DROP COLUMN parent_id")
        db.execute("ALTER TABLE sessions DROP COLUMN leaf_id")
    store = Store(path)
    try:
        session = store.get_session(sid)
        assert shown(session["messages"]) == ["one", "ONE", "two", "TWO"]
        ids = [m["id"] for m in session["messages"]]
        assert [m["parent_id"] for m in session["messages"]] == [None, *ids[:-1]]
        assert session["leaf_id"] == ids[-1]
        assert [m["content"] for m in store.context(sid)] == ["one", "ONE", "two", "TWO"]
        # and it grows as a tree from there: a second answer to "two" beside the first
        again = store.add_answer(sid, ids[2], "t" * 16, "tiny")
        assert store.get_session(sid)["messages"][-1]["versions"]["ids"] == [ids[3], again]
    finally:
        store.close()


def test_context_follows_the_versions_shown_not_every_row(app, client):
    sid = chat(app, client, ("one", "ONE", "completed"), ("two", "TWO", "completed"))
    store = store_of(app)
    first_answer = store.get_session(sid)["messages"][1]["id"]
    _, answer = store.add_exchange(sid, "two, edited", "t" * 16, "tiny", parent_id=first_answer)
    store.save_answer(answer, "TWO AGAIN", "completed")
    assert [m["content"] for m in store.context(sid)] == ["one", "ONE", "two, edited", "TWO AGAIN"]
    _, answer = store.add_exchange(sid, "one, edited", "t" * 16, "tiny", parent_id=None)
    store.save_answer(answer, "UNO", "completed")
    assert [m["content"] for m in store.context(sid)] == ["one, edited", "UNO"]
    assert store.context(sid, None) == []


def test_showing_a_version_shows_where_its_branch_was_last_written(app, client):
    sid = chat(app, client, ("one", "ONE", "completed"), ("dogs", "DOGS", "completed"))
    store = store_of(app)
    one, first_answer, dogs, _ = (m["id"] for m in store.get_session(sid)["messages"])
    birds, _ = store.add_exchange(sid, "birds", "t" * 16, "tiny", parent_id=first_answer)
    store.show_version(sid, dogs)
    store.add_exchange(sid, "more about dogs", "t" * 16, "tiny")  # written in the older branch
    store.show_version(sid, birds)
    assert shown(store.get_session(sid)["messages"])[2] == "birds"
    # not the newest child at each step (birds): the branch written last
    assert shown(store.show_version(sid, one)["messages"])[2:5] == ["dogs", "DOGS", "more about dogs"]


# over HTTP, with a model answering


def test_regenerate_keeps_the_old_answer_as_a_version(api, fake):
    fake.push(*(Script(tokens=[t]) for t in ("hello", "first answer", "second answer")))
    sid = api.session()
    api.send(sid, "earlier").end()
    api.send(sid, "question").end()
    old = api.messages(sid)[-1]
    again = regenerate(api, sid, old["id"], {"model": "llama3.2"})
    start = again.until("start")
    assert start["model"] == "llama3.2"
    assert start["user_message_id"] == old["parent_id"] and start["message_id"] != old["id"]
    assert again.end() == {"status": "completed"}
    # the model saw the conversation up to the prompt, without the old answer
    sent = fake.chat_calls()[-1].body["messages"]
    assert [m["content"] for m in sent] == ["earlier", "hello", "question"]

    messages = api.messages(sid)
    assert shown(messages)[-2:] == ["question", "second answer"]
    assert messages[-1]["versions"] == {"index": 1, "count": 2, "ids": [old["id"], start["message_id"]]}
    assert "versions" not in messages[-2]  # the prompt has one version

    back = show(api, sid, old["id"])
    assert back.status_code == 200, back.text
    assert shown(back.json()["messages"])[-1] == "first answer"
    assert back.json()["messages"][-1]["versions"]["index"] == 0
    assert shown(api.messages(sid))[-1] == "first answer"  # stored, not only answered


def test_edit_and_resend_keeps_the_old_prompt_and_its_answer(api, fake):
    fake.script(tokens=["an answer"])
    sid = api.session()
    api.send(sid, "one").end()
    api.send(sid, "two").end()
    api.send(sid, "three").end()
    one, first_answer, two, *_ = api.messages(sid)

    edited = api.send(sid, "two, better", parent_id=first_answer["id"])
    assert edited.end() == {"status": "completed"}
    sent = fake.chat_calls()[-1].body["messages"]
    assert [m["content"] for m in sent] == ["one", "an answer", "two, better"]
    messages = api.messages(sid)
    assert shown(messages) == ["one", "an answer", "two, better", "an answer"]
    assert messages[2]["versions"]["index"] == 1 and messages[2]["versions"]["ids"][0] == two["id"]

    # the old prompt shows its whole branch again: the newest leaf under it
    back = show(api, sid, two["id"]).json()["messages"]
    assert shown(back) == ["one", "an answer", "two", "an answer", "three", "an answer"]

    # a first prompt edited follows nothing
    assert api.send(sid, "one, better", parent_id=None).end() == {"status": "completed"}
    assert fake.chat_calls()[-1].body["messages"] == [{"role": "user", "content": "one, better"}]
    messages = api.messages(sid)
    assert shown(messages) == ["one, better", "an answer"]
    assert messages[0]["versions"] == {"index": 1, "count": 2, "ids": [one["id"], messages[0]["id"]]}
    # a prompt sent without parent_id follows the versions shown
    api.send(sid, "four").end()
    assert [m["content"] for m in fake.chat_calls()[-1].body["messages"]] == [
        "one, better",
        "an answer",
        "four",
    ]


def test_regenerate_supersedes_the_running_answer(api, fake, jarvis_server):
    fake.push(Script(tokens=1000, interval_s=0.01), Script(tokens=["fresh"]))
    sid = api.session()
    first = api.send(sid, "tell me a long story")
    answer_id = first.until("start")["message_id"]
    first.until("token")
    again = regenerate(api, sid, answer_id)
    assert again.end() == {"status": "completed"}
    assert first.end() == {"status": "superseded", "reason": "superseded"}
    assert fake.chat_calls()[0].wait_closed(2.0)  # its upstream connection is closed
    with store_of(jarvis_server.app).connect() as db:
        old = db.execute("SELECT status, content FROM messages WHERE id = ?", (answer_id,)).fetchone()
    assert old["status"] == "superseded" and old["content"].startswith("tok0")
    messages = api.messages(sid)
    assert shown(messages) == ["tell me a long story", "fresh"]
    assert messages[-1]["versions"]["ids"][0] == answer_id


def test_versions_are_the_owners_alone(app, client):
    accounts = app.extensions["jarvis"].accounts
    accounts.add("ann", PASSWORD)
    accounts.add("bob", PASSWORD)
    ann, bob = ({"Authorization": "Bearer " + accounts.create_token(n)} for n in ("ann", "bob"))
    sid = chat(app, client, ("mine", "yes", "completed"), headers=ann)
    bobs = chat(app, client, ("his", "sure", "completed"), headers=bob)
    prompt, answer = (m["id"] for m in client.get(f"/api/sessions/{sid}", headers=ann).get_json()["messages"])
    his_answer = client.get(f"/api/sessions/{bobs}", headers=bob).get_json()["messages"][1]["id"]

    refused = [
        client.post(f"/api/sessions/{sid}/messages/{answer}/regenerate", json={}, headers=bob),
        client.post(f"/api/sessions/{sid}/leaf", json={"message_id": answer}, headers=bob),
        client.post(f"/api/sessions/{sid}/messages", json={"content": "x", "parent_id": answer}, headers=bob),
        # bob's own session, with ann's messages
        client.post(f"/api/sessions/{bobs}/messages/{answer}/regenerate", json={}, headers=bob),
        client.post(f"/api/sessions/{bobs}/leaf", json={"message_id": prompt}, headers=bob),
        client.post(
            f"/api/sessions/{bobs}/messages", json={"content": "x", "parent_id": answer}, headers=bob
        ),
        # a prompt is not an answer: it is regenerated through its answer, edited through its parent
        client.post(f"/api/sessions/{sid}/messages/{prompt}/regenerate", json={}, headers=ann),
        client.post(f"/api/sessions/{sid}/messages", json={"content": "x", "parent_id": prompt}, headers=ann),
    ]
    refused.append(client.post(f"/api/sessions/{sid}/messages/{2**64}/regenerate", json={}, headers=ann))
    assert [r.status_code for r in refused] == [404] * len(refused), [r.get_json() for r in refused]
    assert client.get(f"/api/sessions/{bobs}", headers=bob).get_json()["messages"][1]["id"] == his_answer
    assert shown(client.get(f"/api/sessions/{sid}", headers=ann).get_json()["messages"]) == ["mine", "yes"]
    assert len(client.get(f"/api/sessions/{bobs}", headers=bob).get_json()["messages"]) == 2


@pytest.mark.parametrize(
    "path, body",
    [
        ("/messages", {"content": "x", "parent_id": "1"}),
        ("/messages", {"content": "x", "parent_id": True}),
        ("/leaf", {}),
        ("/leaf", {"message_id": "1"}),
        ("/leaf", {"message_id": 2**63}),  # more than SQLite holds: refused, not a crash
        ("/messages", {"content": "x", "parent_id": -(2**63) - 1}),
        ("/messages/1/regenerate", {"model": 7}),
    ],
)
def test_bad_version_requests_are_refused_before_a_stream(client, fake, path, body):
    sid = client.post("/api/sessions").get_json()["id"]
    r = client.post(f"/api/sessions/{sid}{path}", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_request", r.get_json()
    assert fake.chat_calls() == []


def test_search_finds_every_version_and_export_holds_the_one_shown(app, client):
    sid = chat(app, client, ("animals", "a zebra", "completed"))
    store = store_of(app)
    prompt = store.get_session(sid)["messages"][0]["id"]
    answer = store.add_answer(sid, prompt, "t" * 16, "tiny")
    store.save_answer(answer, "an okapi", "completed")
    for word in ("zebra", "okapi"):
        assert [s["id"] for s in client.get(f"/api/search?q={word}").get_json()["sessions"]] == [sid]
    exported = client.get(f"/api/sessions/{sid}/export").get_json()["messages"]
    assert [m["content"] for m in exported] == ["animals", "an okapi"]


def test_an_import_is_one_line_of_messages(app, client):
    body = {
        "format": "jarvis.chat",
        "title": "t",
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1", "status": "completed"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "status": "completed"},
        ],
    }
    sid = client.post("/api/sessions/import", json=body).get_json()["id"]
    messages = client.get(f"/api/sessions/{sid}").get_json()["messages"]
    assert shown(messages) == ["q1", "a1", "q2", "a2"]
    assert [m["parent_id"] for m in messages] == [None, *(m["id"] for m in messages[:-1])]
    assert [m["content"] for m in store_of(app).context(sid)] == ["q1", "a1", "q2", "a2"]
