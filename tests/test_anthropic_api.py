"""The official ``anthropic`` client drives Jarvis through /v1/messages, under jarvis serve's server.

Each test checks both ends: what the client got back, and what reached the fake upstream
(which records every request body, and when its connection closed).
"""

from __future__ import annotations

import json

import anthropic
import pytest
import requests

from tests.conftest import HTTP_TIMEOUT, both_upstreams, wait_for
from tests.fake_ollama import Script, overlapped
from tests.samples import ALL, CALL, CLOSE_STATES, PNG_B64, closing_closes_the_upstream, sent, tool_turn_sent

HELLO = [{"role": "user", "content": "hello"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client_of(served, **kwargs) -> anthropic.Anthropic:
    kwargs.setdefault("api_key", served.token)
    return anthropic.Anthropic(base_url=served.url, max_retries=0, timeout=5, **kwargs)


@pytest.fixture
def claude(served):
    with client_of(served) as client:
        yield client


@pytest.fixture
def capable(make_served):
    """A server whose models can do everything (on either upstream), and a client of it."""
    served = make_served(openai_capabilities=ALL)
    with client_of(served) as client:
        yield served, client


def post(served, body: dict, headers: dict | None = None, path: str = "/v1/messages") -> requests.Response:
    headers = served.auth if headers is None else headers
    return requests.post(served.url + path, json=body, headers=headers, timeout=HTTP_TIMEOUT)


def test_a_message_has_text_end_turn_and_usage_and_is_not_stored(claude, served):
    served.fake.script(tokens=5)
    message = claude.messages.create(model="tiny", max_tokens=100, messages=HELLO)
    assert message.type == "message" and message.role == "assistant" and message.model == "tiny"
    assert message.id.startswith("msg_")
    assert [(b.type, b.text) for b in message.content] == [("text", "tok0 tok1 tok2 tok3 tok4 ")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 5)
    assert sent(served)["options"] == {"num_predict": 100}
    assert served.sessions() == [] and served.idle()


def test_a_streamed_message_follows_anthropics_event_sequence(claude, served):
    served.fake.script(tokens=4, interval_s=0.01)
    with claude.messages.stream(model="tiny", max_tokens=100, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 "
    assert [b.text for b in final.content] == [text] and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 4)
    served.fake.script(tokens=2)
    kinds = [e.type for e in claude.messages.create(model="tiny", max_tokens=9, messages=HELLO, stream=True)]
    deltas = kinds.count("content_block_delta")  # texts that arrive together are sent together
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas >= 1


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_cut_by_max_tokens_stops_with_max_tokens(claude, served, stream):
    served.fake.script(tokens=3, done_reason="length")
    kwargs = {"model": "tiny", "max_tokens": 3, "messages": HELLO}
    if stream:
        with claude.messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        message = claude.messages.create(**kwargs)
    assert message.stop_reason == "max_tokens"


def test_system_sampling_and_stop_sequences_reach_the_upstream(claude, served):
    claude.messages.create(
        model="tiny",
        max_tokens=20,
        system=[{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        ],
        stop_sequences=["\n\n"],
        metadata={"user_id": "someone"},
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40},
    )
    body = sent(served)
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "one\ntwo"},
    ]
    assert body["options"] == {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "num_predict": 20,
    }  # no "stop": Jarvis matches stop sequences itself (tests/test_stop_sequences.py)


def _error(r: requests.Response) -> dict:
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    return body["error"]


@pytest.mark.parametrize(
    "body, named",
    [
        ({"model": "tiny", "messages": HELLO}, "max_tokens"),
        ({"model": "tiny", "max_tokens": 0, "messages": HELLO}, "max_tokens"),
        ({"model": "tiny", "max_tokens": 9, "messages": HELLO, "mcp_servers": [{}]}, "mcp_servers"),
        ({"model": "tiny", "max_tokens": 9, "messages": HELLO, "container": "c"}, "container"),
        ({"model": "tiny", "max_tokens": 9, "messages": HELLO, "frobnicate": 1}, "frobnicate"),
        ({"model": "tiny", "max_tokens": 9, "messages": HELLO, "metadata": {"x": 1}}, "metadata.x"),
        ({"model": "tiny", "max_tokens": 9, "messages": [{"role": "system", "content": "x"}]}, "role"),
        (
            {
                "model": "tiny",
                "max_tokens": 9,
                "messages": [{"role": "user", "content": [{"type": "document"}]}],
            },
            "messages[0].content[0]",
        ),
        (
            {"model": "tiny", "max_tokens": 9, "messages": HELLO, "tools": [{"type": "web_search_20250305"}]},
            "tools[0]",
        ),
        ({"model": "tiny", "max_tokens": 9, "messages": HELLO, "temperature": 3}, "temperature"),
    ],
)
def test_bad_or_refused_input_is_a_400_naming_the_field_and_never_reaches_the_model(served, body, named):
    r = post(served, body)
    assert r.status_code == 400
    error = _error(r)
    assert error["type"] == "invalid_request_error" and named in error["message"]
    assert served.fake.chat_calls() == []


def test_the_client_raises_its_own_errors(claude, served):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model="tiny", max_tokens=9, messages=HELLO, extra_body={"frobnicate": 1})
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="nope", max_tokens=9, messages=HELLO)
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert served.fake.chat_calls() == []


def test_x_api_key_and_bearer_are_both_accepted_and_a_bad_key_is_401(served):
    served.fake.script(tokens=1)
    as_bearer = client_of(served, api_key=None, auth_token=served.token)
    assert as_bearer.messages.create(model="tiny", max_tokens=9, messages=HELLO).content[0].text == "tok0 "
    as_bearer.close()
    body = {"model": "tiny", "max_tokens": 9, "messages": HELLO}
    r = post(served, body, headers={"x-api-key": served.token, "anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "tok0 "
    wrong = client_of(served, api_key="jv_wrong")
    with pytest.raises(anthropic.AuthenticationError) as caught:
        wrong.messages.create(model="tiny", max_tokens=9, messages=HELLO)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "authentication_error"
    wrong.close()
    r = post(served, body, headers={"x-api-key": "jv_wrong"})
    assert r.status_code == 401 and _error(r)["type"] == "authentication_error"
    # the header is Anthropic's: the other routes still want a bearer token
    r = requests.get(served.url + "/api/sessions", headers={"x-api-key": served.token}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 401
    assert len(served.fake.chat_calls()) == 2


@both_upstreams
@pytest.mark.parametrize("stream", [False, True])
def test_tools_reach_the_model_and_its_calls_come_back_as_tool_use(capable, stream):
    served, client = capable
    served.fake.script(tokens=0, tool_calls=[CALL])
    kwargs = {"model": "tiny", "max_tokens": 100, "messages": HELLO, "tools": [WEATHER]}
    if stream:
        joined = ""
        events = client.messages.create(stream=True, **kwargs)
        for event in events:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                joined += event.delta.partial_json
            if event.type == "message_delta":
                stop = event.delta.stop_reason
        assert json.loads(joined) == {"city": "Paris"}
        with client.messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)
        stop = message.stop_reason
    assert stop == "tool_use" and message.stop_reason == "tool_use"
    (block,) = [b for b in message.content if b.type == "tool_use"]
    assert block.name == "get_weather" and block.input == {"city": "Paris"} and block.id
    function = {
        "name": "get_weather",
        "description": WEATHER["description"],
        "parameters": WEATHER["input_schema"],
    }
    assert served.fake.chat_calls()[0].body["tools"] == [{"type": "function", "function": function}]


@pytest.mark.parametrize(
    "choice, want",
    [
        ({"type": "any"}, ("required", None)),
        ({"type": "tool", "name": "get_weather"}, ("required", "get_weather")),
        ({"type": "none"}, ("none", None)),
        ({"type": "auto", "disable_parallel_tool_use": True}, ("auto", None)),
    ],
)
def test_tool_choice_becomes_the_cores(served, choice, want):
    from jarvis.dialects import anthropic as dialect

    with served.app.test_request_context():
        call = dialect.parse(
            {"model": "tiny", "max_tokens": 9, "messages": HELLO, "tools": [WEATHER], "tool_choice": choice},
            served.app.extensions["jarvis"].config,
            "tiny",
        )
    assert (call.chat.tool_choice, call.chat.tool_name) == want
    assert call.chat.parallel_tool_calls == (not choice.get("disable_parallel_tool_use"))


@both_upstreams
def test_a_tool_result_goes_back_in_each_upstreams_own_shape(capable):
    served, client = capable
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "18 °C"}],
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    message = client.messages.create(model="tiny", max_tokens=100, messages=history, tools=[WEATHER])
    assert message.content[0].text == "tok0 tok1 tok2 tok3 tok4 "
    assistant, tool, user = sent(served)["messages"][1:]
    assert assistant["content"] == "Let me look."
    tool_turn_sent(served, assistant, tool, "toolu_1", "18 °C")
    assert user == {"role": "user", "content": "And tomorrow?"}


def test_a_tool_result_must_answer_an_earlier_tool_use(served):
    messages = [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}
    ]
    r = post(served, {"model": "tiny", "max_tokens": 9, "messages": messages})
    assert r.status_code == 400 and "messages[0].content[0].tool_use_id" in _error(r)["message"]


@both_upstreams
def test_a_base64_image_reaches_the_upstream(capable):
    served, client = capable
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "text", "text": "What is this?"},
    ]
    message = client.messages.create(
        model="tiny", max_tokens=100, messages=[{"role": "user", "content": content}]
    )
    assert message.content[0].text.startswith("I see 1 image(s).")
    assert served.fake.chat_calls()[0].images == [PNG_B64]
    url = {"type": "image", "source": {"type": "url", "url": "http://example.com/cat.png"}}
    r = post(served, {"model": "tiny", "max_tokens": 9, "messages": [{"role": "user", "content": [url]}]})
    assert r.status_code == 400 and "messages[0].content[0].source" in _error(r)["message"]


@both_upstreams
@pytest.mark.parametrize("stream", [False, True])
def test_thinking_in_thinking_blocks_out(capable, stream):
    served, client = capable
    served.fake.script(thinking=["Paris is ", "in France."], tokens=["Sunny."])
    kwargs = {
        "model": "tiny",
        "max_tokens": 4096,
        "messages": HELLO,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    if stream:
        deltas = ""
        for event in client.messages.create(stream=True, **kwargs):
            if event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                deltas += event.delta.thinking
        assert deltas == "Paris is in France."
        served.fake.script(thinking=["Paris is ", "in France."], tokens=["Sunny."])
        with client.messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Paris is in France." and message.content[1].text == "Sunny."
    body = served.fake.chat_calls()[0].body
    assert body.get("think") is True or body.get("reasoning_effort") == "medium"


def test_count_tokens_is_refused_in_anthropics_shape(claude, served):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.count_tokens(model="tiny", messages=HELLO)
    assert "count" in caught.value.body["error"]["message"]
    r = post(served, {"model": "tiny", "messages": HELLO, "frobnicate": 1}, path="/v1/messages/count_tokens")
    assert r.status_code == 400 and "frobnicate" in _error(r)["message"]


def test_upstream_failure_mid_stream_is_an_error_event(claude, served):
    # a clean message_stop here would hand a cut answer to the caller as complete
    served.fake.script(tokens=5, error_after=2)
    got = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        with claude.messages.stream(model="tiny", max_tokens=9, messages=HELLO) as s:
            got.extend(s.text_stream)
    assert "".join(got) == "tok0 tok1 " and caught.value.body["type"] == "error"
    wait_for(served.idle, what="slot released")


@CLOSE_STATES
def test_closing_the_stream_closes_the_upstream(claude, served, state, script):
    # with no disconnect check the worker would read (or wait in recv) to the end of the answer
    served.fake.script(script)
    stream = claude.messages.create(model="tiny", max_tokens=9, messages=HELLO, stream=True)
    events = iter(stream)
    assert next(events).type == "message_start"
    if state != "loading":
        assert next(events).type == "content_block_start"
        assert next(events).delta.text.startswith("tok0 ")
    closing_closes_the_upstream(served, stream)


def test_session_header_supersedes_the_sessions_answer_and_stores_the_exchange(claude, served):
    served.fake.push(Script(tokens=1000, interval_s=0.02), Script(tokens=3))
    sid = served.session()
    joined = claude.with_options(default_headers={"X-Jarvis-Session": sid})
    first = iter(joined.messages.create(model="tiny", max_tokens=9, messages=HELLO, stream=True))
    while next(first).type != "content_block_delta":
        pass
    history = [*HELLO, {"role": "assistant", "content": "tok0 "}, {"role": "user", "content": "again"}]
    second = joined.messages.create(model="tiny", max_tokens=9, messages=history)
    assert second.content[0].text == "tok0 tok1 tok2 "
    with pytest.raises(anthropic.APIStatusError):
        list(first)
    old, new = served.fake.wait_for_calls(2)
    assert old.wait_closed(2) and not overlapped(old, new)
    assert new.body["messages"] == history
    stored = [(m["role"], m["content"], m["status"]) for m in served.messages(sid)]
    assert stored[0] == ("user", "hello", "sent") and stored[1][2] == "superseded"
    assert stored[2:] == [("user", "again", "sent"), ("assistant", "tok0 tok1 tok2 ", "completed")]


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
def test_what_the_backend_cannot_do_is_refused_naming_anthropics_field(served):
    # the OpenAI-compatible fake's models are configured to call tools only: no thinking, no images
    thinking = {"type": "enabled", "budget_tokens": 1024}
    r = post(served, {"model": "tiny", "max_tokens": 2048, "messages": HELLO, "thinking": thinking})
    assert r.status_code == 400 and _error(r)["message"].startswith("thinking")
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    r = post(served, {"model": "tiny", "max_tokens": 9, "messages": [{"role": "user", "content": [image]}]})
    assert r.status_code == 400 and _error(r)["message"].startswith("messages")
    assert served.fake.chat_calls() == []


def opt(key, value):
    return lambda body: body["options"][key] == value


# every top-level field of /v1/messages: (what to add to the request, what the upstream must have been sent)
HONOURED = {
    "model": ({"model": "tiny"}, lambda b: b["model"] == "tiny"),
    "messages": ({}, lambda b: b["messages"] == HELLO),
    "max_tokens": ({"max_tokens": 9}, opt("num_predict", 9)),
    "stream": ({"stream": True}, lambda b: b["stream"] is True),
    "system": (
        {"system": "be brief"},
        lambda b: b["messages"][0] == {"role": "system", "content": "be brief"},
    ),
    "temperature": ({"temperature": 0.5}, opt("temperature", 0.5)),
    "top_p": ({"top_p": 0.5}, opt("top_p", 0.5)),
    "top_k": ({"top_k": 5}, opt("top_k", 5)),
    "stop_sequences": ({"stop_sequences": ["END"]}, lambda b: "stop" not in b["options"]),  # Jarvis cuts
    "tools": ({"tools": [WEATHER]}, lambda b: b["tools"][0]["function"]["name"] == "get_weather"),
    "tool_choice": ({"tools": [WEATHER], "tool_choice": {"type": "none"}}, lambda b: "tools" not in b),
    "thinking": (
        {"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        lambda b: b["think"],
    ),
    "metadata": ({"metadata": {"user_id": "u1"}}, None),
    "cache_control": ({"cache_control": {"type": "ephemeral"}}, None),
    "output_config": (
        {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
        lambda b: b["format"] == {"type": "object"},
    ),
}


def test_the_table_covers_every_field_the_dialect_knows():
    from jarvis.dialects import anthropic as dialect

    assert set(HONOURED) == dialect.FIELDS.honoured


@pytest.mark.parametrize("name", sorted(HONOURED))
def test_each_field_is_honoured(served, name):
    extra, check = HONOURED[name]
    r = post(served, {"model": "tiny", "max_tokens": 100, "messages": HELLO, **extra})
    assert r.status_code == 200, r.text
    if check is not None:
        assert check(sent(served))


def _refused():
    from jarvis.dialects import anthropic as dialect

    return sorted(dialect.FIELDS.refused)


@pytest.mark.parametrize("name", _refused())
def test_each_refused_field_is_a_400_naming_it(served, name):
    r = post(served, {"model": "tiny", "max_tokens": 9, "messages": HELLO, name: {"x": 1}})
    assert r.status_code == 400 and name in _error(r)["message"]
    assert served.fake.chat_calls() == []
