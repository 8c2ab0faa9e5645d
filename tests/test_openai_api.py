"""The official ``openai`` client drives Jarvis through /v1, under jarvis serve's server.

Upstream closes are read from the fake Ollama's own record of its connection,
so "closed" means the model's socket closed.
"""

from __future__ import annotations

import threading
import time

import ollama
import openai
import pytest
import requests

from jarvis.store import Store
from jarvis.upstream import local
from jarvis.web.accounts import Accounts
from tests.conftest import HTTP_TIMEOUT, clean_env, free_port, serve_process, stop_process, wait_for
from tests.fake_ollama import Script, overlapped
from tests.samples import CLOSE_STATES, closing_closes_the_upstream

HELLO = [{"role": "user", "content": "hello"}]


def test_models_lists_what_the_upstream_has(oai):
    ids = [m.id for m in oai.models.list()]
    assert ids == ["llama3.2:latest", "tiny:latest"]


def test_non_streaming_answer_has_usage_and_is_not_stored(oai, served):
    served.fake.script(tokens=5)
    answer = oai.chat.completions.create(model="tiny", messages=HELLO)
    assert answer.object == "chat.completion" and answer.model == "tiny"
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and choice.message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert choice.finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
        7,
        5,
        12,
    )
    assert served.sessions() == []  # stateless: nothing stored
    assert served.idle()


def test_streaming_answer_ends_with_finish_reason_usage_and_done(oai, served):
    served.fake.script(tokens=4, interval_s=0.01)
    chunks = list(
        oai.chat.completions.create(
            model="tiny", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 "
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    usage = chunks[-1]
    assert usage.choices == [] and (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (7, 4)
    # without include_usage there is no usage chunk
    plain = list(oai.chat.completions.create(model="tiny", messages=HELLO, stream=True))
    assert plain[-1].choices[0].finish_reason == "stop" and all(c.usage is None for c in plain)


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_cut_by_the_token_limit_finishes_with_length(oai, served, stream):
    served.fake.script(tokens=3, done_reason="length")
    answer = oai.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, stream=stream)
    last = list(answer)[-1] if stream else answer
    assert last.choices[0].finish_reason == "length"
    assert served.fake.chat_calls()[0].body["options"] == {"num_predict": 3}


def test_system_history_text_parts_and_sampling_reach_the_upstream(oai, served):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
    ]
    oai.chat.completions.create(
        model="tiny",
        messages=messages,
        temperature=0.5,
        top_p=0.9,
        max_completion_tokens=20,
        stop=["\n\n"],
        seed=42,
        frequency_penalty=0.1,  # passed on under Ollama's own name, as Ollama's OpenAI layer does
    )
    (call,) = served.fake.chat_calls()
    assert call.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "one\ntwo"},
    ]
    assert call.body["options"] == {
        "temperature": 0.5,
        "top_p": 0.9,
        "num_predict": 20,
        "seed": 42,
        "frequency_penalty": 0.1,
    }  # no "stop": Jarvis matches it itself (tests/test_stop_sequences.py)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "tiny", "messages": "hello"}, "messages"),
        ({"model": "tiny", "messages": []}, "messages"),
        ({"model": "tiny", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"model": "tiny", "messages": [{"role": "critic", "content": "x"}]}, "messages[0].role"),
        ({"model": 7, "messages": HELLO}, "model"),
        ({"model": "ti\x00ny", "messages": HELLO}, "model"),
        ({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, None),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x" * 101}]}, "messages[0].content"),
        ({"model": "tiny", "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": "tiny", "messages": HELLO, "n": 2}, "n"),
    ],
)
def test_bad_input_is_a_400_in_openai_shape_and_never_reaches_the_model(make_served, body, param):
    served = make_served(max_prompt_chars=100)
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0, timeout=5)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.with_raw_response.create(**body)
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param
    # the server stays healthy
    assert client.chat.completions.create(model="tiny", messages=HELLO).choices[0].finish_reason == "stop"
    assert len(served.fake.chat_calls()) == 1 and served.idle()
    client.close()


def test_a_body_nested_deeper_than_the_parser_recurses_is_a_400(served):
    nested = '{"model": "tiny", "messages": ' + "[" * 5000 + "]" * 5000 + "}"
    url = served.url + "/v1/chat/completions"
    r = requests.post(url, data=nested, headers=served.auth, timeout=HTTP_TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert served.fake.chat_calls() == []


def test_a_body_that_is_not_json_is_a_400(served):
    r = requests.post(
        served.url + "/v1/chat/completions", data="{nope", headers=served.auth, timeout=HTTP_TIMEOUT
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert served.fake.chat_calls() == []


def test_unknown_model_is_not_found(oai, served):
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as caught:
            oai.chat.completions.create(model="nope", messages=HELLO, stream=stream)
        assert caught.value.body["code"] == "model_not_found"
    assert served.fake.chat_calls() == []


def test_a_bad_credential_is_401_and_never_reaches_the_model(served):
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="jv_wrong", max_retries=0, timeout=5)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="tiny", messages=HELLO, stream=True)
    assert caught.value.body["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    client.close()
    bare = requests.post(served.url + "/v1/chat/completions", json={"messages": HELLO}, timeout=HTTP_TIMEOUT)
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "unauthorized"
    assert served.fake.chat_calls() == []


def test_upstream_failure_before_the_answer_is_a_server_error(oai, served):
    served.fake.script(status=500, error="out of memory")
    with pytest.raises(openai.InternalServerError) as caught:
        oai.chat.completions.create(model="tiny", messages=HELLO)
    assert caught.value.status_code == 502 and caught.value.body["code"] == "upstream_http_error"


def test_upstream_failure_mid_stream_raises_in_the_client(oai, served):
    # a clean finish here would hand a cut answer to the caller as complete
    served.fake.script(tokens=5, error_after=2)
    stream = oai.chat.completions.create(model="tiny", messages=HELLO, stream=True)
    got = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
            assert chunk.choices[0].finish_reason is None
    assert "".join(got) == "tok0 tok1 "
    assert caught.value.body["code"] == "upstream_error"
    wait_for(served.idle, what="slot released")


@CLOSE_STATES
def test_closing_the_stream_closes_the_upstream(oai, served, state, script):
    # with no disconnect check the worker would read (or wait in recv) to the end of the answer
    served.fake.script(script)
    stream = oai.chat.completions.create(model="tiny", messages=HELLO, stream=True)
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.role == "assistant"
    if state != "loading":
        assert next(chunks).choices[0].delta.content.startswith("tok0 ")
    closing_closes_the_upstream(served, stream)


def test_revoking_the_token_ends_its_live_call(oai, served):
    # without the revocation check the call would stream on to the end of its 1000 tokens
    served.fake.script(tokens=1000, interval_s=0.02)
    chunks = iter(oai.chat.completions.create(model="tiny", messages=HELLO, stream=True))
    next(chunks)
    accounts = served.app.extensions["jarvis"].accounts
    accounts.revoke(accounts.tokens()[0]["id"])
    with pytest.raises(openai.APIError):
        for _ in chunks:
            pass
    assert served.fake.wait_for_calls(1)[0].wait_closed(2)
    wait_for(served.idle, what="slot released")


def test_a_non_streaming_client_that_gives_up_closes_the_upstream(oai, served):
    # the client's timeout closes its connection while the model loads: nobody reads the answer
    served.fake.script(load_delay_s=60)
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.5).chat.completions.create(model="tiny", messages=HELLO)
    call = served.fake.wait_for_calls(1)[0]
    assert call.wait_closed(2) and call.closed_by == "client"
    wait_for(served.idle, what="slot released")


def test_session_header_supersedes_the_sessions_answer_and_stores_the_exchange(oai, served):
    served.fake.push(Script(tokens=1000, interval_s=0.02), Script(tokens=3))
    sid = served.session()
    joined = oai.with_options(default_headers={"X-Jarvis-Session": sid})
    first = iter(joined.chat.completions.create(model="tiny", messages=HELLO, stream=True))
    next(first), next(first)  # role, then the first token
    history = [*HELLO, {"role": "assistant", "content": "tok0 "}, {"role": "user", "content": "again"}]
    second = joined.chat.completions.create(model="tiny", messages=history)
    assert second.choices[0].message.content == "tok0 tok1 tok2 "
    with pytest.raises(openai.APIError) as caught:
        list(first)
    assert caught.value.body["code"] == "superseded"
    old, new = served.fake.wait_for_calls(2)
    assert old.wait_closed(2) and not overlapped(old, new)
    assert new.body["messages"] == history  # the caller's conversation, as sent
    stored = [(m["role"], m["content"], m["status"]) for m in served.messages(sid)]
    assert stored[0] == ("user", "hello", "sent") and stored[1][2] == "superseded"
    assert stored[2:] == [("user", "again", "sent"), ("assistant", "tok0 tok1 tok2 ", "completed")]


def test_session_header_must_name_a_session_of_the_caller(oai, served):
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="tiny", messages=HELLO, extra_headers={"X-Jarvis-Session": "nope"})
    assert served.fake.chat_calls() == []


def test_concurrent_clients_are_independent(oai, served):
    served.fake.script(tokens=20, interval_s=0.01)
    results, errors = {}, []

    def ask(i: int) -> None:
        try:
            stream = oai.chat.completions.create(model="tiny", messages=HELLO, stream=True)
            results[i] = "".join(c.choices[0].delta.content or "" for c in stream)
        except openai.OpenAIError as e:
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    leaving = oai.chat.completions.create(model="tiny", messages=HELLO, stream=True)
    next(iter(leaving))
    leaving.close()  # one client leaving ends only its own answer
    for t in threads:
        t.join(10)
    assert errors == [] and list(results.values()) == ["".join(f"tok{i} " for i in range(20))] * 3
    wait_for(served.idle, what="slots released")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not local.available(), reason="needs llama-cpp-python and the embedded model")
def test_the_embedded_model_answers_the_openai_client(make_served):
    served = make_served(backend="local", local_max_tokens=24)
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0, timeout=60)
    (model,) = [m.id for m in client.models.list()]
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}])
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > 0 and 0 < answer.usage.completion_tokens <= 24
    # closing a stream mid-answer gives the model back: the next call is answered
    stream = client.chat.completions.create(model=model, messages=HELLO, stream=True, max_tokens=24)
    next(iter(stream))
    stream.close()
    wait_for(served.idle, what="slot released")
    chunks = list(
        client.chat.completions.create(
            model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="llama3.2", messages=HELLO)
    client.close()


def test_calls_count_in_the_metrics_per_dialect_and_user(oai, served):
    served.fake.script(tokens=5)
    oai.chat.completions.create(model="tiny", messages=HELLO)
    list(oai.chat.completions.create(model="tiny", messages=HELLO, stream=True))
    ollama_call = requests.post(
        served.url + "/api/chat",
        json={"model": "tiny", "messages": HELLO, "stream": False},
        headers=served.auth,
        timeout=HTTP_TIMEOUT,
    )
    assert ollama_call.status_code == 200
    metrics = requests.get(served.url + "/metrics", headers=served.auth, timeout=HTTP_TIMEOUT).text
    assert 'jarvis_compat_calls_total{api="openai",user="ann"} 2.0' in metrics
    assert 'jarvis_compat_calls_total{api="ollama",user="ann"} 1.0' in metrics
    assert 'jarvis_compat_tokens_total{api="openai",kind="completion",user="ann"} 10.0' in metrics
    assert 'jarvis_compat_tokens_total{api="openai",kind="prompt",user="ann"} 14.0' in metrics
    assert 'jarvis_compat_tokens_total{api="ollama",kind="completion",user="ann"} 5.0' in metrics


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_plain_jarvis_serve_serves_both_official_clients(fake, tmp_path):
    database = str(tmp_path / "serve.sqlite3")
    store = Store(database)
    Accounts(store).add("ann", "correct horse battery")
    token = Accounts(store).create_token("ann", "tests")
    store.close()
    env = clean_env(
        JARVIS_BACKEND="ollama", JARVIS_OLLAMA_URL=fake.url, JARVIS_MODEL="tiny", JARVIS_DATABASE=database
    )
    proc, api = serve_process(env)
    try:
        fake.script(tokens=1000, interval_s=0.01)
        client = openai.OpenAI(base_url=api.url + "/v1", api_key=token, max_retries=0, timeout=5)
        stream = client.chat.completions.create(model="tiny", messages=HELLO, stream=True)
        chunks = iter(stream)
        next(chunks), next(chunks)
        call = fake.wait_for_calls(1)[0]
        began = time.monotonic()
        stream.close()
        assert call.wait_closed(2) and call.closed_by == "client" and call.closed_at - began < 0.5
        client.close()
        fake.script(tokens=2)
        other = ollama.Client(host=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert other.chat(model="tiny", messages=HELLO, stream=False).message.content == "tok0 tok1 "
        other.close()
    finally:
        stop_process(proc)


def test_a_non_streaming_call_superseded_in_its_session_is_a_conflict_not_retried(served):
    # a retry would supersede the newer answer in turn
    served.fake.push(Script(load_delay_s=60), Script(tokens=2))
    sid = served.session()
    retrying = openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=2, timeout=5)
    caught: list[Exception] = []

    def ask() -> None:
        try:
            retrying.chat.completions.create(
                model="tiny", messages=HELLO, extra_headers={"X-Jarvis-Session": sid}
            )
        except openai.APIStatusError as e:
            caught.append(e)

    first = threading.Thread(target=ask)
    first.start()
    served.fake.wait_for_calls(1)
    r = requests.post(
        f"{served.url}/api/sessions/{sid}/messages",
        json={"content": "newer"},
        headers=served.auth,
        stream=True,
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200 and b'"status":"completed"' in r.content
    first.join(10)
    assert len(caught) == 1 and isinstance(caught[0], openai.ConflictError)
    assert caught[0].body["code"] == "superseded"
    assert len(served.fake.chat_calls()) == 2  # not retried
    retrying.close()


def test_a_model_server_that_is_down_is_a_502_for_both_dialects(make_served):
    served = make_served(ollama_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0, timeout=5)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="tiny", messages=HELLO)
    assert caught.value.status_code == 502 and caught.value.body["code"] == "upstream_unavailable"
    with pytest.raises(openai.InternalServerError):
        client.models.list()
    client.close()
    r = requests.post(
        served.url + "/api/chat",
        json={"model": "tiny", "messages": HELLO, "stream": False},
        headers=served.auth,
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 502 and "not reachable" in r.json()["error"]
