"""OpenAI's Responses API (``client.responses``) against Jarvis under waitress, both upstreams.

Each test checks both ends: what the official ``openai`` client got back, and what reached the
fake upstream (it records every request body, and when its socket closed).
"""

from __future__ import annotations

import json

import openai
import pytest
import requests

from jarvis.dialects import responses

from .conftest import HTTP_TIMEOUT, both_upstreams, wait_for
from .fake_ollama import Script
from .samples import ALL, CLOSE_STATES, PNG_B64, SCHEMA, WEATHER, closing_closes_the_upstream, tool_turn_sent

TOOL = {"type": "function", **WEATHER["function"]}  # the Responses API's flat function tool
ASK = "What is the weather in Paris?"


def client_of(served, **headers) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=served.url + "/v1", api_key=served.token, max_retries=0, timeout=5, default_headers=headers
    )


@pytest.fixture
def capable(make_served):
    """A server whose models can do everything, and a client of it."""
    served = make_served(openai_capabilities=ALL)
    with client_of(served) as client:
        yield served, client


def sent(served) -> dict:
    return served.fake.chat_calls()[-1].body


def test_plain_text_is_output_text_with_usage_and_nothing_stored(capable):
    served, client = capable
    served.fake.script(tokens=3)
    answer = client.responses.create(model="tiny", input="hello", instructions="be brief")
    assert answer.object == "response" and answer.status == "completed" and answer.model == "tiny"
    assert answer.output_text == "tok0 tok1 tok2 "
    (item,) = answer.output
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    assert (answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.total_tokens) == (7, 3, 10)
    assert sent(served)["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert served.sessions() == [] and served.idle()


def test_sampling_and_the_answer_limit_reach_the_upstream(capable):
    served, client = capable
    served.fake.script(tokens=2, done_reason="length")
    answer = client.responses.create(
        model="tiny", input="hi", temperature=0.5, top_p=0.9, max_output_tokens=20
    )
    assert answer.status == "incomplete" and answer.incomplete_details.reason == "max_output_tokens"
    assert sent(served)["options"] == {"temperature": 0.5, "top_p": 0.9, "num_predict": 20}


@both_upstreams
def test_streaming_text_deltas_and_the_completed_response(capable):
    served, client = capable
    served.fake.script(tokens=4, interval_s=0.01)
    events = list(client.responses.create(model="tiny", input="hello", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "tok0 tok1 tok2 tok3 "
    done = events[-1].response
    assert done.output_text == deltas and done.usage.output_tokens == 4 and done.id == events[0].response.id
    # the helper the client offers accumulates the same answer
    with client.responses.stream(model="tiny", input="hello") as stream:
        final = stream.get_final_response()
    assert final.output_text == deltas and final.status == "completed"


@both_upstreams
@pytest.mark.parametrize("stream", [False, True])
def test_function_tools_come_back_as_function_call_items(capable, stream):
    served, client = capable
    served.fake.script(tokens=0, tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
    kwargs = {"model": "tiny", "input": ASK, "tools": [TOOL]}
    if stream:
        events = list(client.responses.create(stream=True, **kwargs))
        arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert done.arguments == arguments
        output = events[-1].response.output
        served.fake.script(thinking=["Hm."], tokens=0, tool_calls=[{"name": "get_weather", "arguments": {}}])
        with client.responses.stream(**kwargs) as helper:  # the client's accumulating helper takes it too
            final = helper.get_final_response()
        assert [i.type for i in final.output] == ["reasoning", "function_call"]
    else:
        output = client.responses.create(**kwargs).output
    (call,) = output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert json.loads(call.arguments) == {"city": "Paris"}
    if stream:
        assert json.loads(arguments) == {"city": "Paris"}
    assert sent(served)["tools"] == [WEATHER]


@both_upstreams
def test_a_function_call_output_goes_back_in_the_upstreams_shape(capable):
    served, client = capable
    served.fake.script(tokens=2)
    answer = client.responses.create(
        model="tiny",
        tools=[TOOL],
        input=[
            {"role": "user", "content": ASK},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "18 °C, sunny"},
        ],
    )  # fmt: skip
    assert answer.output_text == "tok0 tok1 "
    assistant, tool = sent(served)["messages"][1:]
    tool_turn_sent(served, assistant, tool, "call_1", "18 °C, sunny")


@both_upstreams
def test_text_format_json_schema_is_the_upstreams_format_and_json_comes_out(capable):
    served, client = capable
    text = {"format": {"type": "json_schema", "name": "person", "schema": SCHEMA}}
    answer = client.responses.create(model="tiny", input="who?", text=text)
    parsed = json.loads(answer.output_text)
    assert set(parsed) == {"name", "age"} and isinstance(parsed["age"], int)
    body = sent(served)
    if served.fake.kind == "ollama":
        assert body["format"] == SCHEMA
    else:
        assert body["response_format"]["type"] == "json_schema"
    client.responses.create(model="tiny", input="who?", text={"format": {"type": "json_object"}})
    if served.fake.kind == "ollama":
        assert sent(served)["format"] == "json"


@both_upstreams
def test_an_input_image_as_a_data_url_reaches_the_upstream(capable):
    served, client = capable
    content = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64," + PNG_B64, "detail": "auto"},
    ]
    answer = client.responses.create(model="tiny", input=[{"role": "user", "content": content}])
    assert answer.output_text.startswith("I see 1 image(s).")
    assert served.fake.chat_calls()[0].images == [PNG_B64]


@both_upstreams
@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_effort_is_think_and_thinking_comes_out_as_a_reasoning_summary(capable, stream):
    served, client = capable
    served.fake.script(thinking=["Paris is ", "in France."], tokens=["Sunny."])
    kwargs = {"model": "tiny", "input": ASK, "reasoning": {"effort": "high", "summary": "auto"}}
    if stream:
        events = list(client.responses.create(stream=True, **kwargs))
        summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
        assert summary == "Paris is in France."
        answer = events[-1].response
    else:
        answer = client.responses.create(**kwargs)
    reasoning, message = answer.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "Paris is in France."
    assert message.type == "message" and answer.output_text == "Sunny."
    body = sent(served)
    assert body.get("think") == "high" or body.get("reasoning_effort") == "high"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input=ASK, reasoning={"effort": "low", "summary": "detailed"})
    assert caught.value.body["param"] == "reasoning.summary"


def test_store_and_previous_response_id_are_refused_without_a_session(served):
    client = client_of(served)
    for kwargs, param in (
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="tiny", input="hello", **kwargs)
        assert caught.value.body["param"] == param and "X-Jarvis-Session" in caught.value.body["message"]
    assert client.responses.create(model="tiny", input="hello", store=False).status == "completed"
    assert len(served.fake.chat_calls()) == 1
    with pytest.raises(openai.NotFoundError) as caught:  # nothing kept, so nothing to fetch
        client.responses.retrieve("resp_1")
    assert "X-Jarvis-Session" in caught.value.body["message"]
    client.close()


def test_a_session_carries_the_state_of_previous_response_id(served):
    sid = served.session()
    client = client_of(served, **{"X-Jarvis-Session": sid})
    served.fake.push(Script(tokens=["Hi Ann."]), Script(tokens=["Ann."]))
    first = client.responses.create(model="tiny", input="I am Ann.", store=True)
    assert first.store is True and first.output_text == "Hi Ann."
    second = client.responses.create(model="tiny", input="Who am I?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text == "Ann."
    assert sent(served)["messages"] == [
        {"role": "user", "content": "I am Ann."},
        {"role": "assistant", "content": "Hi Ann."},
        {"role": "user", "content": "Who am I?"},
    ]
    stored = [(m["role"], m["content"], m["status"]) for m in served.messages(sid)]
    assert stored == [
        ("user", "I am Ann.", "sent"),
        ("assistant", "Hi Ann.", "completed"),
        ("user", "Who am I?", "sent"),
        ("assistant", "Ann.", "completed"),
    ]
    with pytest.raises(openai.BadRequestError) as caught:  # only the session's latest answer goes on
        client.responses.create(model="tiny", input="again", previous_response_id=first.id)
    assert caught.value.body["param"] == "previous_response_id"
    two = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(openai.BadRequestError) as caught:  # the session stores one prompt per answer
        client.responses.create(model="tiny", input=two, previous_response_id=second.id)
    assert caught.value.body["param"] == "input"
    assert len(served.fake.chat_calls()) == 2
    client.close()


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"temprature": 1}, "temprature"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
         "input[0].content[0]"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format"),
    ],
)  # fmt: skip
def test_what_jarvis_does_not_honour_is_refused_by_name(served, kwargs, param):
    body = {"model": "tiny", "input": "hello", **kwargs}
    r = requests.post(served.url + "/v1/responses", json=body, headers=served.auth, timeout=HTTP_TIMEOUT)
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == param and error["type"] == "invalid_request_error"
    if param == "tools[0].type":
        assert kwargs["tools"][0]["type"] in error["message"]
    assert served.fake.chat_calls() == []


@pytest.mark.parametrize("name", sorted(responses.FIELDS.refused))
def test_each_refused_field_is_a_400_naming_it(served, name):
    body = {"model": "tiny", "input": "hello", name: {"x": 1}}  # a value no refused field accepts
    r = requests.post(served.url + "/v1/responses", json=body, headers=served.auth, timeout=HTTP_TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["param"] == name
    assert r.json()["error"]["code"] == "unsupported" and served.fake.chat_calls() == []


def test_a_missing_or_bad_credential_is_401(served):
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="jv_wrong", max_retries=0, timeout=5)
    for stream in (False, True):
        with pytest.raises(openai.AuthenticationError) as caught:
            client.responses.create(model="tiny", input="hello", stream=stream)
        assert caught.value.body["type"] == "authentication_error"
    client.close()
    bare = requests.post(served.url + "/v1/responses", json={"input": "hi"}, timeout=HTTP_TIMEOUT)
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "unauthorized"
    assert served.fake.chat_calls() == []


def test_an_unknown_model_is_not_found(served):
    with pytest.raises(openai.NotFoundError) as caught:
        client_of(served).responses.create(model="nope", input="hello")
    assert caught.value.body["code"] == "model_not_found"


def test_an_upstream_failure_mid_stream_is_response_failed_and_raises(served):
    # a clean response.completed here would hand a cut answer to the caller as finished
    served.fake.script(tokens=5, error_after=2)
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for event in client_of(served).responses.create(model="tiny", input="hello", stream=True):
            seen.append(event.type)
    assert "response.failed" in seen and "response.completed" not in seen
    assert caught.value.body["code"] == "upstream_error"
    wait_for(served.idle, what="slot released")


@both_upstreams
@CLOSE_STATES
def test_closing_the_stream_closes_the_upstream(capable, state, script):
    # with no disconnect check the worker would read (or wait in recv) to the end of the answer
    served, client = capable
    served.fake.script(script)
    stream = client.responses.create(model="tiny", input="hello", stream=True)
    events = iter(stream)
    assert next(events).type == "response.created"
    if state != "loading":
        while next(events).type != "response.output_text.delta":
            pass
    closing_closes_the_upstream(served, stream)


def test_calls_count_in_the_metrics_as_responses(served):
    served.fake.script(tokens=5)
    client_of(served).responses.create(model="tiny", input="hello")
    metrics = requests.get(served.url + "/metrics", headers=served.auth, timeout=HTTP_TIMEOUT).text
    assert 'jarvis_compat_calls_total{api="responses",user="ann"} 1.0' in metrics
    assert 'jarvis_compat_tokens_total{api="responses",kind="completion",user="ann"} 5.0' in metrics
