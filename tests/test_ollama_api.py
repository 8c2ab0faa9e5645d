"""Ollama's own ``ollama`` client drives Jarvis as if it were Ollama, under jarvis serve's server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import ollama
import pytest
import requests

from jarvis.upstream import local
from tests.conftest import HTTP_TIMEOUT, wait_for
from tests.fake_ollama import Script

HELLO = [{"role": "user", "content": "hello"}]


def client_of(served, token: str | None = None, timeout: float = 5) -> ollama.Client:
    return ollama.Client(
        host=served.url, headers={"Authorization": f"Bearer {token or served.token}"}, timeout=timeout
    )


@pytest.fixture
def oll(served):
    client = client_of(served)
    yield client
    client.close()


def test_tags_and_version(oll, served):
    assert [m.model for m in oll.list().models] == ["llama3.2:latest", "tiny:latest"]
    # the client has no call for it; front-ends read it to learn the API level
    r = requests.get(served.url + "/api/version", headers=served.auth, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.json()["version"].count(".") == 2


def test_non_streaming_chat_has_the_final_statistics_and_is_not_stored(oll, served):
    served.fake.script(tokens=5)
    answer = oll.chat(model="tiny", messages=HELLO, stream=False)
    assert answer.model == "tiny" and answer.message.role == "assistant"
    assert answer.message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert answer.done and answer.done_reason == "stop"
    assert (answer.prompt_eval_count, answer.eval_count) == (7, 5)
    assert answer.total_duration > 0 and answer.eval_duration >= 0 and answer.created_at
    assert served.sessions() == []  # stateless: nothing stored
    assert served.idle()


def test_streaming_chat_is_ndjson_ending_in_done(oll, served):
    served.fake.script(tokens=4, interval_s=0.01)
    parts = list(oll.chat(model="tiny", messages=HELLO, stream=True))
    assert "".join(p.message.content for p in parts) == "tok0 tok1 tok2 tok3 "
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    last = parts[-1]
    assert last.done_reason == "stop" and last.eval_count == 4 and last.total_duration > 0


def test_streaming_is_the_default_and_each_line_is_json(served):
    served.fake.script(tokens=2)
    r = requests.post(
        served.url + "/api/chat",
        json={"model": "tiny", "messages": HELLO},
        headers=served.auth,
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.split("\n") if line.strip()]
    assert "".join(line["message"]["content"] for line in lines) == "tok0 tok1 "
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]


def test_generate_is_one_user_message_after_the_system_prompt(oll, served):
    served.fake.script(tokens=3)
    answer = oll.generate(model="tiny", prompt="why?", system="be brief", stream=False)
    assert answer.response == "tok0 tok1 tok2 " and answer.done_reason == "stop"
    options = {"num_predict": 3, "temperature": 0.2}
    streamed = list(oll.generate(model="tiny", prompt="why?", options=options, stream=True))
    assert "".join(p.response for p in streamed) == "tok0 tok1 tok2 " and streamed[-1].done
    first, second = served.fake.chat_calls()
    assert first.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "why?"},
    ]
    assert second.body["options"] == {"num_predict": 3, "temperature": 0.2}


def test_options_reach_the_upstream_and_length_is_the_done_reason(oll, served):
    served.fake.script(tokens=2, done_reason="length")
    options = {"temperature": 0.5, "top_p": 0.9, "num_predict": 2, "stop": ["\n"], "seed": 1, "num_ctx": 99}
    answer = oll.chat(model="tiny", messages=HELLO, options=options, stream=False)
    assert answer.done_reason == "length"
    body = served.fake.chat_calls()[0].body
    # every option, num_ctx included, unchanged; but "stop", which Jarvis matches itself
    assert body["options"] == {k: v for k, v in options.items() if k != "stop"}


def test_unknown_model_is_404(oll, served):
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as caught:
            result = oll.chat(model="nope", messages=HELLO, stream=stream)
            list(result) if stream else None
        assert caught.value.status_code == 404 and "nope" in caught.value.error
    assert served.fake.chat_calls() == []


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/chat", "{not json"),
        ("/api/chat", '{"model": "tiny", "messages": ' + "[" * 5000 + "]" * 5000 + "}"),  # past recursion
        ("/api/chat", {"model": "tiny", "messages": "hello"}),
        ("/api/chat", {"model": "tiny", "messages": []}),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "user"}]}),
        ("/api/chat", {"model": ["tiny"], "messages": HELLO}),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x" * 101}]}),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "options": {"num_predict": "many"}}),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "?", "images": ["aGk="]}]}),
        ("/api/generate", {"model": "tiny", "prompt": 5}),
        ("/api/generate", {"model": "tiny", "prompt": "hi", "system": ["x"]}),
    ],
)
def test_bad_input_is_a_400_in_ollama_shape_and_never_reaches_the_model(make_served, path, body):
    served = make_served(max_prompt_chars=100)
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    r = requests.post(served.url + path, headers=served.auth, timeout=HTTP_TIMEOUT, **kwargs)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    assert served.fake.chat_calls() == []
    client = client_of(served)
    assert client.chat(model="tiny", messages=HELLO, stream=False).done  # still healthy
    client.close()


def test_a_bad_credential_is_401_and_never_reaches_the_model(served):
    client = client_of(served, token="jv_wrong")
    with pytest.raises(ollama.ResponseError) as caught:
        list(client.chat(model="tiny", messages=HELLO, stream=True))
    assert caught.value.status_code == 401
    with pytest.raises(ollama.ResponseError):
        client.list()
    client.close()
    bare = requests.post(served.url + "/api/generate", json={"prompt": "hi"}, timeout=HTTP_TIMEOUT)
    assert bare.status_code == 401 and isinstance(bare.json()["error"], str)
    assert served.fake.chat_calls() == []


def test_upstream_failure_mid_stream_raises_in_the_client(oll, served):
    # a done line here would hand a cut answer to the caller as complete
    served.fake.script(tokens=5, error_after=2)
    got = []
    with pytest.raises(ollama.ResponseError) as caught:
        for part in oll.chat(model="tiny", messages=HELLO, stream=True):
            assert not part.done
            got.append(part.message.content)
    assert "".join(got) == "tok0 tok1 " and "upstream" in caught.value.error.lower()
    served.fake.script(status=500, error="out of memory")
    with pytest.raises(ollama.ResponseError) as caught:
        oll.chat(model="tiny", messages=HELLO, stream=False)
    assert caught.value.status_code == 502
    wait_for(served.idle, what="slot released")


@pytest.mark.parametrize(
    "state, script",
    [
        ("streaming", Script(tokens=1000, interval_s=0.01)),
        ("stalled", Script(tokens=50, stall_after=2)),
    ],
)
def test_closing_the_stream_closes_the_upstream(oll, served, state, script):
    # with no disconnect check the worker would read (or wait in recv) to the end of the answer
    served.fake.script(script)
    parts = oll.chat(model="tiny", messages=HELLO, stream=True)
    assert next(parts).message.content.startswith("tok0 ")
    call = served.fake.wait_for_calls(1)[0]
    parts.close()  # leaves the client's response context: the connection closes
    assert call.wait_closed(2) and call.closed_by == "client"
    wait_for(served.idle, what="slot released")


def test_a_client_that_gives_up_while_the_model_loads_closes_the_upstream(served):
    # nothing is written while the model loads: only the disconnect check can see the client go
    served.fake.script(load_delay_s=60)
    client = client_of(served, timeout=0.5)
    with pytest.raises(httpx.ReadTimeout):
        client.chat(model="tiny", messages=HELLO, stream=False)
    client.close()
    call = served.fake.wait_for_calls(1)[0]
    assert call.wait_closed(2) and call.closed_by == "client"
    wait_for(served.idle, what="slot released")


@pytest.mark.slow
def test_a_killed_client_process_closes_the_upstream_while_the_model_loads(served):
    # the streaming client waits for its first line; killing it is the only way it leaves
    served.fake.script(load_delay_s=60)
    script = (
        "import ollama, sys; c = ollama.Client(host=sys.argv[1], headers={'Authorization': sys.argv[2]});"
        "list(c.chat(model='tiny', messages=[{'role': 'user', 'content': 'hi'}], stream=True))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, served.url, served.auth["Authorization"]])
    try:
        call = served.fake.wait_for_calls(1, timeout=20)[0]
        began = time.monotonic()
        proc.kill()
        assert call.wait_closed(2) and call.closed_by == "client"
        assert call.closed_at - began < 0.5
    finally:
        proc.kill()
        proc.wait(10)
    wait_for(served.idle, what="slot released")


def test_session_header_stores_the_exchange_in_the_session(served):
    served.fake.script(tokens=2)
    sid = served.session()
    client = ollama.Client(host=served.url, headers={**served.auth, "X-Jarvis-Session": sid}, timeout=5)
    answer = client.chat(model="tiny", messages=[{"role": "system", "content": "s"}, *HELLO], stream=False)
    client.close()
    assert answer.message.content == "tok0 tok1 "
    stored = [(m["role"], m["content"], m["status"]) for m in served.messages(sid)]
    assert stored == [("user", "hello", "sent"), ("assistant", "tok0 tok1 ", "completed")]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not local.available(), reason="needs llama-cpp-python and the embedded model")
def test_the_embedded_model_answers_the_ollama_client(make_served):
    served = make_served(backend="local", local_max_tokens=24)
    client = client_of(served, timeout=60)
    (model,) = [m.model for m in client.list().models]
    answer = client.chat(model=model, messages=[{"role": "user", "content": "Say hi."}], stream=False)
    assert answer.message.content and answer.done_reason in ("stop", "length") and answer.eval_count > 0
    parts = list(client.generate(model=model, prompt="Say hi.", system="Be brief.", stream=True))
    assert "".join(p.response for p in parts) and parts[-1].done and parts[-1].prompt_eval_count > 0
    client.close()


def test_json_posted_as_a_form_is_read_as_curl_d_sends_it(served):
    # Ollama's own examples are `curl .../api/chat -d '{...}'`: a form content type, a JSON body
    body = json.dumps({"model": "tiny", "messages": HELLO, "stream": False})
    headers = {**served.auth, "Content-Type": "application/x-www-form-urlencoded"}
    r = requests.post(served.url + "/api/chat", data=body, headers=headers, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200 and r.json()["done"] is True, r.text
