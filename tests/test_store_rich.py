"""Stored sessions hold the whole conversation: images (once each, by content hash, served to their
owner alone), tool calls and their results, and thinking; they come back in GET /api/sessions/<id>,
in the context sent upstream, and through an export and import."""

from __future__ import annotations

import base64

import pytest
import requests

from jarvis.conversation import Image, ToolCall
from tests.conftest import HTTP_TIMEOUT
from tests.test_chats import two_users

pytestmark = pytest.mark.timeout(30)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(40))
GIF = b"GIF89a" + bytes(range(30))
WEATHER = {"name": "weather", "arguments": {"city": "Lisbon"}}


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def store_of(app):
    return app.extensions["jarvis"].store


def count(app, table: str) -> int:
    with store_of(app).connect() as db:
        return db.execute(f"SELECT COUNT(*) AS n FROM {table}").fetchone()["n"]


def digest(data: bytes) -> str:
    return Image("image/png", data).digest


def send(api, sid: str, content: str = "what is this?", **body) -> requests.Response:
    return requests.post(
        f"{api.url}/api/sessions/{sid}/messages",
        json={"content": content, **body},
        headers=api.headers,
        timeout=HTTP_TIMEOUT,
    )  # the whole answer: it ends with the fake's last token


def get(api, path: str, headers=None) -> requests.Response:
    return requests.get(api.url + path, headers=headers or api.headers, timeout=HTTP_TIMEOUT)


# images


def test_an_image_is_stored_once_however_often_it_is_sent_and_goes_upstream(api, fake, jarvis_server):
    fake.script(tokens=2)
    sid = api.session()
    assert send(api, sid, images=[data_url(PNG)]).status_code == 200
    assert send(api, sid, "and again", images=[data_url(PNG), data_url(GIF, "image/gif")]).status_code == 200
    app = jarvis_server.app
    assert count(app, "images") == 2  # the PNG once, the GIF once
    # the second call carried the whole conversation: the first prompt's image too
    sent = fake.chat_calls()[-1].body["messages"]
    assert [m.get("images") for m in sent if m["role"] == "user"] == [
        [base64.b64encode(PNG).decode()],
        [base64.b64encode(PNG).decode(), base64.b64encode(GIF).decode()],
    ]
    users = [m for m in api.messages(sid) if m["role"] == "user"]
    assert users[1]["images"] == [
        {"digest": digest(PNG), "mime": "image/png", "url": f"api/images/{digest(PNG)}"},
        {"digest": digest(GIF), "mime": "image/gif", "url": f"api/images/{digest(GIF)}"},
    ]
    assert users[0]["meta"] == {"images": [{"digest": digest(PNG), "mime": "image/png"}]}


def test_an_image_is_served_to_its_owner_alone(app, client):
    ann, bob = two_users(app)
    sid = client.post("/api/sessions", headers=ann).get_json()["id"]
    store_of(app).add_exchange(
        sid, {"role": "user", "content": "look", "images": [Image("image/png", PNG)]}, "t" * 16, "tiny"
    )
    r = client.get(f"/api/images/{digest(PNG)}", headers=ann)
    assert r.status_code == 200 and r.data == PNG and r.mimetype == "image/png"
    assert r.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    for headers, path in [
        (bob, f"/api/images/{digest(PNG)}"),  # another user's: as unknown
        (ann, f"/api/images/{digest(GIF)}"),
        (ann, "/api/images/not-a-digest"),
    ]:
        r = client.get(path, headers=headers)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    # gone with the last chat that held it
    assert client.delete(f"/api/sessions/{sid}", headers=ann).status_code == 200
    assert count(app, "images") == 0
    assert client.get(f"/api/images/{digest(PNG)}", headers=ann).status_code == 404


def test_an_image_two_chats_hold_stays_while_one_does(app, client):
    first, second = (client.post("/api/sessions").get_json()["id"] for _ in range(2))
    for sid in (first, second):
        store_of(app).add_exchange(
            sid, {"role": "user", "content": "x", "images": [Image("image/png", PNG)]}, "t" * 16, "tiny"
        )
    assert count(app, "images") == 1
    client.delete(f"/api/sessions/{first}")
    assert client.get(f"/api/images/{digest(PNG)}").status_code == 200


@pytest.mark.parametrize(
    "images, limits, code, says",
    [
        (["https://example.com/cat.png"], {}, "bad_request", "data URL"),
        ([base64.b64encode(PNG).decode()], {}, "bad_request", "data URL"),  # bare base64: not here
        ([data_url(b"just some text", "image/png")], {}, "bad_request", "not a PNG"),
        ([data_url(PNG)], {"max_image_bytes": 20}, "image_too_large", "20 bytes"),
        ([data_url(PNG), data_url(GIF)], {"max_images_bytes": 60}, "image_too_large", "60 bytes"),
        ("not a list", {}, "bad_request", "images"),
    ],
)
def test_bad_images_are_refused_before_anything_is_stored(make_app, fake, images, limits, code, says):
    client = make_app(**limits).test_client()
    sid = client.post("/api/sessions").get_json()["id"]
    r = client.post(f"/api/sessions/{sid}/messages", json={"content": "hi", "images": images})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == code, r.get_json()
    assert says in r.get_json()["error"]["message"]
    assert fake.chat_calls() == []
    assert client.get(f"/api/sessions/{sid}").get_json()["messages"] == []


def test_images_to_a_model_without_vision_are_refused(app, client, fake):
    fake.capabilities["tiny"] = ["completion"]  # as Ollama's /api/show says it
    sid = client.post("/api/sessions").get_json()["id"]
    r = client.post(f"/api/sessions/{sid}/messages", json={"content": "hi", "images": [data_url(PNG)]})
    assert r.status_code == 400 and "'images'" in r.get_json()["error"]["message"]
    assert r.get_json()["error"]["param"] == "images"
    assert fake.chat_calls() == [] and count(app, "images") == 0
    assert client.get(f"/api/sessions/{sid}").get_json()["messages"] == []


def test_a_models_capabilities_are_read_by_name(client, fake):
    fake.models.append("llava")
    fake.capabilities["llava"] = ["completion", "vision"]
    r = client.get("/api/models/llava:7b")
    assert r.get_json() == {"name": "llava:7b", "capabilities": ["completion", "vision"]}
    assert client.get("/api/models/unknown").get_json() == {"name": "unknown", "capabilities": None}
    assert client.get("/api/models/a%20b").status_code == 400


# thinking, tool calls, tool results


def test_thinking_and_tool_calls_are_stored_and_come_back(api, fake, jarvis_server):
    fake.script(tokens=0, thinking=["the user wants ", "the weather"], tool_calls=[WEATHER])
    sid = api.session()
    assert send(api, sid, "weather in Lisbon?").status_code == 200
    answer = api.messages(sid)[-1]
    assert answer["status"] == "completed"
    meta = answer["meta"]
    assert meta["thinking"] == "the user wants the weather" and isinstance(meta["thinking_ms"], int)
    call = meta["tool_calls"][0]
    assert meta["tool_calls"] == [{"id": call["id"], "name": "weather", "arguments": '{"city": "Lisbon"}'}]
    assert call["id"].startswith("call_")  # Ollama gives none: Jarvis made it
    assert set(meta["usage"]) == {"prompt_tokens", "completion_tokens"}
    # the tool's result follows, as a prompt of its own; the call goes back with it, the thinking not
    store = store_of(jarvis_server.app)
    result = {"role": "tool", "content": "18 C", "tool_call_id": call["id"], "name": "weather"}
    _, answer_id = store.add_exchange(sid, result, "t" * 16, "tiny")
    store.save_answer(answer_id, "It is 18 C.", "completed")
    shown = api.messages(sid)
    assert shown[2]["role"] == "tool" and shown[2]["meta"] == {"tool_call_id": call["id"], "name": "weather"}
    fake.script(tokens=1)
    assert send(api, sid, "thanks").status_code == 200
    sent = fake.chat_calls()[-1].body["messages"]
    assert sent[1:4] == [
        {"role": "assistant", "content": "", "tool_calls": [{"function": WEATHER}]},
        {"role": "tool", "content": "18 C", "tool_name": "weather"},
        {"role": "assistant", "content": "It is 18 C."},
    ]
    assert get(api, f"/api/sessions/{sid}").json()["title"] == "weather in Lisbon?"


def looked_at_a_cat(app, client):
    """A chat whose prompt has an image, whose answer thought and called a tool, and the tool's
    result answered: (the store, the session, the answer's meta)."""
    store = store_of(app)
    sid = client.post("/api/sessions").get_json()["id"]
    _, answer = store.add_exchange(
        sid, {"role": "user", "content": "what's here?", "images": [Image("image/png", PNG)]}, "t", "m"
    )
    meta = {
        "thinking": "hmm",
        "thinking_ms": 1500,
        "tool_calls": [{"id": "c1", "name": "look", "arguments": "{}"}],
    }
    store.save_answer(answer, "", "completed", meta=meta)
    _, answer = store.add_exchange(
        sid, {"role": "tool", "content": "a cat", "tool_call_id": "c1", "name": "look"}, "t", "m"
    )
    store.save_answer(answer, "A cat.", "completed")
    return store, sid, meta


def test_the_context_is_the_rich_conversation(app, client):
    store, sid, meta = looked_at_a_cat(app, client)
    image = Image("image/png", PNG)
    store.add_exchange(sid, "thanks", "t", "m")  # a plain string is a user's text, as before
    assert store.context(sid) == [
        {"role": "user", "content": "what's here?", "images": [image]},
        {"role": "assistant", "content": "", "tool_calls": [ToolCall("c1", "look", "{}")]},
        {"role": "tool", "content": "a cat", "tool_call_id": "c1", "name": "look"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "thanks"},
    ]
    assert [m["title"] for m in store.list_sessions()] == ["what's here?"]


def test_a_tool_result_can_be_answered_again(app, client):
    store = store_of(app)
    sid = client.post("/api/sessions").get_json()["id"]
    store.add_exchange(sid, "q", "t", "m")
    prompt, answer = store.add_exchange(
        sid, {"role": "tool", "content": "r", "tool_call_id": "c", "name": "f"}, "t", "m"
    )
    assert store.prompt_of(sid, answer) == prompt
    store.add_answer(sid, prompt, "t", "m")  # a regenerated answer to a tool's result


# export and import


def test_images_tool_calls_and_thinking_survive_an_export_and_import(app, client):
    store, sid, meta = looked_at_a_cat(app, client)
    exported = client.get(f"/api/sessions/{sid}/export").get_json()
    assert exported["messages"][0]["images"] == [data_url(PNG)]
    assert exported["messages"][1]["meta"]["tool_calls"] == meta["tool_calls"]
    client.delete(f"/api/sessions/{sid}")
    assert count(app, "images") == 0
    r = client.post("/api/sessions/import", json=exported)
    assert r.status_code == 201, r.get_json()
    new = r.get_json()["id"]
    assert count(app, "images") == 1
    assert store.context(new) == [
        {"role": "user", "content": "what's here?", "images": [Image("image/png", PNG)]},
        {"role": "assistant", "content": "", "tool_calls": [ToolCall("c1", "look", "{}")]},
        {"role": "tool", "content": "a cat", "tool_call_id": "c1", "name": "look"},
        {"role": "assistant", "content": "A cat."},
    ]
    assert client.get(f"/api/images/{digest(PNG)}").data == PNG
    markdown = client.get(f"/api/sessions/{new}/export?format=md").get_data(as_text=True)
    assert f"![image](api/images/{digest(PNG)})" not in markdown  # a file stands alone: no server links
    assert "[image: image/png]" in markdown and "Thought for 1.5 s" in markdown
    assert "Called `look({})`" in markdown and "## Tool look" in markdown


def test_an_import_cannot_reach_an_image_it_does_not_hold(app, client):
    ann, bob = two_users(app)
    sid = client.post("/api/sessions", headers=ann).get_json()["id"]
    store_of(app).add_exchange(
        sid, {"role": "user", "content": "mine", "images": [Image("image/png", PNG)]}, "t", "m"
    )
    forged = {
        "format": "jarvis.chat",
        "title": "t",
        "messages": [
            {
                "role": "user",
                "content": "x",
                "meta": {"images": [{"digest": digest(PNG), "mime": "image/png"}]},
            }
        ],
    }
    new = client.post("/api/sessions/import", json=forged, headers=bob).get_json()["id"]
    assert store_of(app).context(new) == [{"role": "user", "content": "x"}]
    assert client.get(f"/api/images/{digest(PNG)}", headers=bob).status_code == 404


@pytest.mark.parametrize(
    "images, says",
    [("x", "images"), (["https://example.com/a.png"], "data URL"), ([data_url(b"text")], "not a PNG")],
)
def test_an_import_refuses_images_that_are_not_data_urls_of_images(client, images, says):
    body = {"format": "jarvis.chat", "messages": [{"role": "user", "content": "x", "images": images}]}
    r = client.post("/api/sessions/import", json=body)
    assert r.status_code == 400 and says in r.get_json()["error"]["message"]
