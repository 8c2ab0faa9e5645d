"""The HTTP contract: sessions, bad input, errors from the upstream, health."""

from __future__ import annotations

import logging
import time

import pytest
import requests

from jarvis.errors import StoreError
from jarvis.lifecycle.stream import Stream
from tests.conftest import HTTP_TIMEOUT, Api, both_upstreams, wait_for
from tests.fake_ollama import Script


def test_sessions_are_created_listed_newest_first_and_read(client):
    a = client.post("/api/sessions")
    b = client.post("/api/sessions")
    assert a.status_code == b.status_code == 201
    ida, idb = a.get_json()["id"], b.get_json()["id"]
    assert len(ida) >= 22 and ida != idb  # 144 random bits, URL-safe
    listed = [s["id"] for s in client.get("/api/sessions").get_json()["sessions"]]
    assert listed[:2] == [idb, ida]
    read = client.get(f"/api/sessions/{ida}").get_json()
    assert (read["id"], read["title"], read["messages"]) == (ida, "", [])
    assert read["created_at"] == read["updated_at"] == a.get_json()["created_at"]
    missing = client.get("/api/sessions/nope")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"data": "hello", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": "{not json", "content_type": "application/json"}, 400, "bad_request"),
        ({"json": ["a list"]}, 400, "bad_request"),
        ({"json": {}}, 400, "bad_request"),
        ({"json": {"content": 5}}, 400, "bad_request"),
        ({"json": {"content": "   "}}, 400, "bad_request"),
        ({"json": {"content": "hi", "model": 7}}, 400, "bad_request"),
        ({"json": {"content": "x" * 101}}, 413, "prompt_too_large"),
    ],
)
def test_bad_bodies_are_refused_before_a_stream(make_app, fake, kwargs, status, code):
    client = make_app(max_prompt_chars=100).test_client()
    sid = client.post("/api/sessions").get_json()["id"]
    r = client.post(f"/api/sessions/{sid}/messages", **kwargs)
    assert r.status_code == status and r.get_json()["error"]["code"] == code
    assert fake.chat_calls() == []
    assert client.get(f"/api/sessions/{sid}").get_json()["messages"] == []


def test_huge_body_is_refused_from_its_length_before_it_is_read(make_app, make_server):
    api = Api(make_server(make_app(max_prompt_chars=100)).url)
    sid = api.session()
    # declare 50 MB but send only the head: the server must answer without waiting for it
    import socket

    with socket.create_connection(("127.0.0.1", int(api.url.rsplit(":", 1)[1])), timeout=3) as s:
        s.sendall(
            f"POST /api/sessions/{sid}/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: 50000000\r\n\r\n".encode()
        )
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413")


def test_unknown_session_is_404_for_send_and_stop(client):
    assert client.post("/api/sessions/nope/messages", json={"content": "hi"}).status_code == 404
    assert client.post("/api/sessions/nope/stop").status_code == 404


def test_delete_stops_a_running_answer_and_forgets_the_session(api, fake):
    fake.script(load_delay_s=60)
    sid = api.session()
    sse = api.send(sid, "x")
    sse.until("start")
    call = fake.wait_for_calls(1)[0]
    r = requests.delete(f"{api.url}/api/sessions/{sid}", headers=api.headers, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.json() == {"deleted": True}
    assert call.wait_closed(1)
    assert sse.end()["status"] == "stopped"
    assert (
        requests.get(f"{api.url}/api/sessions/{sid}", headers=api.headers, timeout=HTTP_TIMEOUT).status_code
        == 404
    )


def _end_of(api, fake, script) -> dict:
    fake.script(script)
    sid = api.session()
    sse = api.send(sid, "x")
    end = sse.end()
    answer = api.messages(sid)[-1]
    assert answer["status"] == end["status"] and answer["error"] == end.get("error")
    assert "error" not in answer["content"].lower()  # never pasted into the answer text
    return end


def test_model_not_found_names_the_model(api, fake):
    sid = api.session()
    end = api.send(sid, "x", model="nonexistent").end()
    assert end["status"] == "failed" and end["error"]["code"] == "model_not_found"
    assert "nonexistent" in end["error"]["message"] and "ollama pull" in end["error"]["message"]


@both_upstreams
def test_upstream_http_500_fails_the_stream(api, fake):
    end = _end_of(api, fake, Script(status=500, error="out of memory"))
    assert end["error"]["code"] == "upstream_http_error" and "out of memory" in end["error"]["message"]


@both_upstreams
def test_error_line_mid_stream_keeps_the_partial_answer(api, fake):
    fake.script(Script(tokens=5, error_after=3))
    sid = api.session()
    sse = api.send(sid, "x")
    end = sse.end()
    assert end["status"] == "failed" and end["error"]["code"] == "upstream_error"
    assert sse.text() == "tok0 tok1 tok2 "
    assert api.messages(sid)[-1]["content"] == "tok0 tok1 tok2 "


@both_upstreams
def test_upstream_dropping_mid_body_fails_clearly(api, fake):
    end = _end_of(api, fake, Script(tokens=5, drop_after=2))
    assert end["status"] == "failed" and end["error"]["code"] == "upstream_disconnected"


def test_malformed_line_is_a_protocol_error(api, fake):
    end = _end_of(api, fake, Script(raw=[b'{"message":{"content":"a"}}\n', b"not json\n"]))
    assert end["error"]["code"] == "upstream_bad_response"


def test_refused_connection_says_where_ollama_should_be(make_app, make_server, fake):
    app = make_app(ollama_url="http://127.0.0.1:9")
    api = Api(make_server(app).url)
    sid = api.session()
    end = api.send(sid, "x").end()
    assert end["status"] == "failed" and end["error"]["code"] == "upstream_unavailable"
    assert "127.0.0.1:9" in end["error"]["message"] and "ollama serve" in end["error"]["message"]
    health = requests.get(api.url + "/healthz", headers=api.headers, timeout=HTTP_TIMEOUT).json()
    assert health["upstream_ok"] is False and health["active_streams"] == 0


@both_upstreams
def test_idle_timeout_ends_a_stalled_answer_as_timeout(make_app, make_server, fake):
    fake.script(Script(tokens=10, stall_after=2))
    api = Api(make_server(make_app(idle_timeout_s=0.3)).url)
    sid = api.session()
    began = time.monotonic()
    sse = api.send(sid, "x")
    end = sse.end()
    assert end["status"] == "timeout" and end["error"]["code"] == "idle_timeout"
    assert time.monotonic() - began < 2
    assert api.messages(sid)[-1]["content"] == "tok0 tok1 "
    assert fake.chat_calls()[0].wait_closed(1)


@both_upstreams
def test_first_token_timeout_while_the_model_loads(make_app, make_server, fake):
    fake.script(Script(load_delay_s=60))
    api = Api(make_server(make_app(first_token_timeout_s=0.3)).url)
    end = api.send(api.session(), "x").end()
    assert end["status"] == "timeout" and end["error"]["code"] == "first_token_timeout"


def test_healthz_reports_streams_and_upstream(api, fake):
    health = requests.get(api.url + "/healthz", headers=api.headers, timeout=HTTP_TIMEOUT).json()
    assert health["upstream_ok"] is True and health["active_streams"] == 0
    assert health["backend"] == "ollama" and health["model"] == "tiny"


def test_models_lists_ollama_tags(api):
    r = requests.get(api.url + "/api/models", headers=api.headers, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and {"name": "tiny:latest"} in r.json()["models"]


@both_upstreams
def test_multi_turn_sends_earlier_messages(api, fake):
    fake.script(tokens=2)
    sid = api.session()
    api.send(sid, "one").end()
    api.send(sid, "two").end()
    second = fake.chat_calls()[1].body["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[0]["content"] == "one" and second[1]["content"] == "tok0 tok1 "


@both_upstreams
def test_an_answer_cut_by_a_token_limit_ends_as_length_and_stays_in_context(api, fake):
    fake.script(tokens=3, done_reason="length")
    sid = api.session()
    assert api.send(sid, "long story").end()["status"] == "length"
    answer = api.messages(sid)[-1]
    assert answer["status"] == "length" and answer["meta"]["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
    }
    fake.script(tokens=1)
    api.send(sid, "go on").end()
    sent = fake.chat_calls()[1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"], "a cut answer is still context"


def test_a_long_first_line_becomes_a_title_with_an_ellipsis(api, fake):
    fake.script(tokens=1)
    short, long = api.session(), api.session()
    api.send(short, "Short question\nwith a second line").end()
    api.send(long, "word " * 30).end()
    listed = requests.get(api.url + "/api/sessions", headers=api.headers, timeout=HTTP_TIMEOUT).json()[
        "sessions"
    ]
    titles = {s["id"]: s["title"] for s in listed}
    assert titles[short] == "Short question"
    assert len(titles[long]) == 60 and titles[long].endswith("word…")


def test_lifecycle_events_are_logged_with_trace_id(api, fake, caplog):
    caplog.set_level(logging.INFO, logger="jarvis")
    fake.script(tokens=500, interval_s=0.01)
    sid = api.session()
    first = api.send(sid, "a")
    trace = first.until("start")["trace_id"]
    first.until("token")
    fake.push(Script(tokens=1))
    api.send(sid, "b").end()
    api.stop(sid)
    first.end()
    wait_for(
        lambda: any(
            r.getMessage() == "stream_cleanup" and r.fields["trace_id"] == trace for r in caplog.records
        )
    )
    names = {r.getMessage() for r in caplog.records if r.name == "jarvis"}
    assert {"stream_start", "prev_stream_finished_cleanly", "stream_cleanup"} <= names
    cleanup = next(
        r for r in caplog.records if r.getMessage() == "stream_cleanup" and r.fields["trace_id"] == trace
    )
    assert cleanup.fields["status"] == "superseded" and cleanup.fields["session"] == sid
    assert "duration_ms" in cleanup.fields


def test_a_line_longer_than_the_limit_ends_the_stream(make_app, make_server, fake):
    fake.script(Script(raw=[b'{"message":{"content":"' + b"x" * 5000]))
    api = Api(make_server(make_app(max_line_bytes=1024)).url)
    end = api.send(api.session(), "x").end()
    assert end["status"] == "failed" and end["error"]["code"] == "upstream_bad_response"


def test_invalid_utf8_is_a_protocol_error(api, fake):
    end = _end_of(api, fake, Script(raw=[b'{"message":{"content":"\xff\xfe"}}\n']))
    assert end["error"]["code"] == "upstream_bad_response"


def test_endless_whitespace_ends_at_the_total_timeout(make_app, make_server, fake):
    # blank lines carry no text: only the total limit stops them
    fake.script(Script(forever=b"\n" * 64))
    api = Api(make_server(make_app(total_timeout_s=0.5)).url)
    end = api.send(api.session(), "x").end()
    assert end["status"] == "timeout" and end["error"]["code"] == "total_timeout"
    assert fake.chat_calls()[0].wait_closed(2)


def test_a_body_that_never_ends_is_cut_at_the_answer_limit(make_app, make_server, fake):
    line = b'{"message":{"content":"0123456789"},"done":false}\n'
    fake.script(Script(forever=line * 10))
    api = Api(make_server(make_app(max_answer_chars=5000)).url)
    sid = api.session()
    sse = api.send(sid, "x")
    end = sse.end()
    assert end["status"] == "failed" and end["error"]["code"] == "answer_too_long"
    assert len(sse.text()) <= 5000 and api.messages(sid)[-1]["content"] == sse.text()
    assert fake.chat_calls()[0].wait_closed(2)


def test_upstream_reset_mid_request_fails_clearly(api, fake):
    end = _end_of(api, fake, Script(refuse=True))
    assert end["status"] == "failed" and end["error"]["code"] == "upstream_disconnected"


def test_models_answers_502_with_a_clear_error_when_ollama_is_down(make_app):
    client = make_app(ollama_url="http://127.0.0.1:9").test_client()
    r = client.get("/api/models")
    assert r.status_code == 502 and r.get_json()["error"]["code"] == "upstream_unavailable"
    assert "127.0.0.1:9" in r.get_json()["error"]["message"]


def test_a_failed_prompt_write_leaves_the_running_answer_alone(make_app, make_server, fake, monkeypatch):
    # the old hand-over cancelled the running answer before the write that then failed
    fake.script(tokens=1000, interval_s=0.01)
    app = make_app()
    api = Api(make_server(app).url)
    sid = api.session()
    first = api.send(sid, "first")
    first.until("token")

    def broken(*args, **kwargs):
        raise StoreError("disk full")

    monkeypatch.setattr(app.extensions["jarvis"].store, "add_exchange", broken)
    second = api.send(sid, "second")
    assert second.status_code == 500 and second.json()["error"]["code"] == "store_error"
    seen = len(first.events)
    first.until("token")
    assert len(first.events) > seen  # still streaming
    assert app.extensions["jarvis"].registry.active() == 1
    api.stop(sid)
    assert first.end() == {"status": "stopped", "reason": "stopped"}


def test_a_failed_start_releases_the_stream_and_stores_it_failed(make_app, make_server, fake, monkeypatch):
    # a stream left registered would make the session's next prompt wait the whole supersede timeout
    fake.script(tokens=2)
    app = make_app(supersede_timeout_s=5.0)
    api = Api(make_server(app).url)
    sid = api.session()
    real_start = Stream.start

    def no_thread(self, prev):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(Stream, "start", no_thread)
    refused = api.send(sid, "first")
    assert refused.status_code == 500
    assert app.extensions["jarvis"].registry.live() == []
    answer = api.messages(sid)[-1]
    assert answer["status"] == "failed" and answer["error"]["code"] == "internal_error"
    monkeypatch.setattr(Stream, "start", real_start)
    began = time.monotonic()
    assert api.send(sid, "second").end() == {"status": "completed"}
    assert time.monotonic() - began < 2.0  # not the 5 s supersede timeout
