"""The whole conversation through both dialects and both remote backends: tools, tool results,
structured output, images, thinking and options, with the official clients.

Each test drives ``jarvis`` under waitress in front of a fake upstream and checks both ends: what
the client got back, and what reached the upstream (the fake records every request body).
"""

from __future__ import annotations

import base64
import json

import ollama
import openai
import pytest
import requests

from .conftest import HTTP_TIMEOUT, both_upstreams
from .samples import ALL, CALL, PNG, PNG_B64, SCHEMA, WEATHER, sent, tool_turn_sent

HELLO = [{"role": "user", "content": "What is the weather in Paris?"}]


def openai_client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0, timeout=5)


def ollama_client(served) -> ollama.Client:
    return ollama.Client(host=served.url, headers={"Authorization": f"Bearer {served.token}"}, timeout=5)


@pytest.fixture
def capable(make_served):
    """A server whose models can do everything, and an OpenAI client of it."""
    served = make_served(openai_capabilities=ALL)
    with openai_client(served) as client:
        yield served, client


# --- tools ----------------------------------------------------------------------------------


@both_upstreams
@pytest.mark.parametrize("stream", [False, True])
def test_openai_tools_reach_the_model_and_its_calls_come_back(capable, stream):
    served, client = capable
    served.fake.script(tokens=0, tool_calls=[CALL])
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for chunk in client.chat.completions.create(
            model="tiny", messages=HELLO, tools=[WEATHER], stream=True
        ):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or ():
                    c = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                    c["id"] = c["id"] or delta.id
                    c["name"] += delta.function.name or ""
                    c["arguments"] += delta.function.arguments or ""
        (call,) = calls.values()
        name, arguments, ident = call["name"], call["arguments"], call["id"]
    else:
        answer = client.chat.completions.create(model="tiny", messages=HELLO, tools=[WEATHER])
        finish = answer.choices[0].finish_reason
        (tc,) = answer.choices[0].message.tool_calls
        name, arguments, ident = tc.function.name, tc.function.arguments, tc.id
    assert finish == "tool_calls"
    assert name == "get_weather" and json.loads(arguments) == {"city": "Paris"} and ident
    assert sent(served)["tools"] == [WEATHER]  # the same function shape on both wires


@both_upstreams
def test_a_tool_result_goes_back_in_each_upstreams_own_shape(capable):
    served, client = capable
    history = [
        *HELLO,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 °C, sunny"},
    ]  # fmt: skip
    answer = client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER])
    assert answer.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assistant, tool = sent(served)["messages"][1:]
    tool_turn_sent(served, assistant, tool, "call_1", "18 °C, sunny")


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_tools_and_tool_messages(served, stream):
    served.fake.script(tokens=0, tool_calls=[CALL])
    client = ollama_client(served)
    if stream:
        parts = list(client.chat(model="tiny", messages=HELLO, tools=[WEATHER], stream=True))
        calls = [c for p in parts for c in (p.message.tool_calls or ())]
    else:
        calls = client.chat(model="tiny", messages=HELLO, tools=[WEATHER]).message.tool_calls
    (call,) = calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert sent(served)["tools"] == [WEATHER]
    served.fake.script(tokens=3)
    history = [
        *HELLO,
        {"role": "assistant", "content": "", "tool_calls": [{"function": CALL}]},
        {"role": "tool", "content": "18 °C", "tool_name": "get_weather"},
    ]
    assert client.chat(model="tiny", messages=history).message.content
    last = served.fake.chat_calls()[-1].body["messages"]
    assert last[2] == {"role": "tool", "content": "18 °C", "tool_name": "get_weather"}
    client.close()


def test_a_forced_tool_call_is_asked_of_ollama_as_a_format(served):
    # Ollama has no tool_choice: a call the client requires comes from an answer held to the
    # function's parameters
    client = openai_client(served)
    answer = client.chat.completions.create(
        model="tiny",
        messages=HELLO,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    (tc,) = answer.choices[0].message.tool_calls
    assert tc.function.name == "get_weather" and json.loads(tc.function.arguments) == {"city": "x"}
    body = sent(served)
    assert body["format"] == WEATHER["function"]["parameters"] and "tools" not in body
    client.close()


# --- structured output ----------------------------------------------------------------------


@both_upstreams
def test_response_format_becomes_each_upstreams_format(make_served):
    served = make_served()
    client = openai_client(served)
    for response_format, ollama_format in (
        ({"type": "json_object"}, "json"),
        ({"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}, SCHEMA),
    ):
        answer = client.chat.completions.create(model="tiny", messages=HELLO, response_format=response_format)
        parsed = json.loads(answer.choices[0].message.content)
        body = served.fake.chat_calls()[-1].body
        if served.fake.kind == "ollama":
            assert body["format"] == ollama_format
        else:
            assert body["response_format"]["type"] == response_format["type"]
        if ollama_format is SCHEMA:
            assert set(parsed) == {"name", "age"} and isinstance(parsed["age"], int)
    client.close()


def test_ollama_format_passes_as_is(served):
    client = ollama_client(served)
    answer = client.chat(model="tiny", messages=HELLO, format=SCHEMA)
    assert set(json.loads(answer.message.content)) == {"name", "age"}
    assert sent(served)["format"] == SCHEMA
    client.close()


# --- images ---------------------------------------------------------------------------------


@both_upstreams
def test_images_reach_every_upstream_that_takes_them(capable):
    served, client = capable
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
    ]
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}])
    assert answer.choices[0].message.content.startswith("I see 1 image(s).")
    assert served.fake.chat_calls()[0].images == [PNG_B64]


def test_ollama_images_are_base64(served):
    client = ollama_client(served)
    answer = client.chat(model="tiny", messages=[{"role": "user", "content": "?", "images": [PNG]}])
    assert answer.message.content.startswith("I see 1 image(s).")
    assert sent(served)["messages"][0]["images"] == [PNG_B64]
    client.close()


@pytest.mark.parametrize(
    "url, code",
    [
        ("https://example.com/cat.png", "bad_request"),  # Jarvis fetches nothing for a caller
        ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "bad_request"),
        ("data:image/png;base64,@@@", "bad_request"),
        ("data:image/png;base64," + base64.b64encode(PNG + b"\x00" * 2048).decode(), "image_too_large"),
    ],
)
def test_bad_images_are_400_naming_the_part(make_served, url, code):
    served = make_served(max_image_bytes=1024)
    content = [{"type": "text", "text": "?"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(served).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": content}]
        )
    error = caught.value.body
    assert error["param"] == "messages[0].content[1].image_url.url" and error["code"] == code
    assert served.fake.chat_calls() == []


def test_images_to_a_model_without_vision_are_refused_before_the_model(served):
    served.fake.capabilities["tiny"] = ["completion"]
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client(served).chat(model="tiny", messages=[{"role": "user", "content": "?", "images": [PNG]}])
    assert caught.value.status_code == 400 and "vision" in caught.value.error
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(served).chat.completions.create(model="tiny", messages=HELLO, tools=[WEATHER])
    assert caught.value.body["param"] == "tools" and caught.value.body["code"] == "unsupported"
    assert served.fake.chat_calls() == []


def test_an_openai_compatible_host_without_vision_by_configuration_refuses_images(make_served, fake):
    served = make_served(backend="openai", openai_url=fake.url + "/v1")  # default: tools only
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}}]
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(served).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": content}]
        )
    assert "JARVIS_OPENAI_CAPABILITIES" in caught.value.body["message"]


# --- thinking -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_think_in_thinking_out(served, stream):
    served.fake.script(thinking=["Paris is ", "in France."], tokens=["Sunny."])
    client = ollama_client(served)
    if stream:
        parts = list(client.chat(model="tiny", messages=HELLO, think=True, stream=True))
        thinking = "".join(p.message.thinking or "" for p in parts)
        text = "".join(p.message.content or "" for p in parts)
    else:
        answer = client.chat(model="tiny", messages=HELLO, think=True)
        thinking, text = answer.message.thinking, answer.message.content
    assert thinking == "Paris is in France." and text == "Sunny."
    assert sent(served)["think"] is True
    client.close()


@both_upstreams
@pytest.mark.parametrize("stream", [False, True])
def test_openai_reasoning_content_out_as_llama_cpp_and_vllm_send_it(capable, stream):
    served, client = capable
    served.fake.script(thinking=["Paris is ", "in France."], tokens=["Sunny."])
    kwargs = {"model": "tiny", "messages": HELLO, "reasoning_effort": "high"}
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        thinking = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        text = "".join(d.content or "" for d in deltas)
    else:
        message = client.chat.completions.create(**kwargs).choices[0].message
        thinking, text = message.reasoning_content, message.content
    assert thinking == "Paris is in France." and text == "Sunny."
    body = sent(served)
    assert body.get("think") == "high" or body.get("reasoning_effort") == "high"


# --- options, and nothing silently dropped ---------------------------------------------------


def test_every_ollama_option_and_keep_alive_reach_ollama_unchanged(served):
    options = {"num_ctx": 8192, "top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1, "num_predict": 9}
    ollama_client(served).chat(model="tiny", messages=HELLO, options=options, keep_alive="10m")
    body = sent(served)
    assert body["options"] == options and body["keep_alive"] == "10m"


def test_ollama_options_an_openai_compatible_server_cannot_take_are_refused(make_served, fake):
    served = make_served(backend="openai", openai_url=fake.url + "/v1")
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client(served).chat(model="tiny", messages=HELLO, options={"num_ctx": 8192})
    assert caught.value.status_code == 400 and "num_ctx" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client(served).chat(model="tiny", messages=HELLO, keep_alive="5m")
    assert "keep_alive" in caught.value.error
    assert fake.chat_calls() == []


def test_an_unknown_field_is_refused_by_name(served):
    for path, body, param in (
        ("/v1/chat/completions", {"model": "tiny", "messages": HELLO, "temprature": 1}, "temprature"),
        ("/api/chat", {"model": "tiny", "messages": HELLO, "options": {"num_ctxx": 1}}, "options.num_ctxx"),
    ):
        r = requests.post(served.url + path, json=body, headers=served.auth, timeout=HTTP_TIMEOUT)
        assert r.status_code == 400 and param in json.dumps(r.json())
    assert served.fake.chat_calls() == []


def test_several_hosts_refuse_what_their_model_cannot_do_and_pass_the_rest(make_served, fake):
    served = make_served(upstreams=f"ollama={fake.url}", health_interval_s=0.05)
    fake.capabilities["tiny"] = ["completion", "tools"]
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client(served).chat(model="tiny", messages=HELLO, think=True)
    assert caught.value.status_code == 400 and "thinking" in caught.value.error
    fake.script(tokens=0, tool_calls=[CALL])
    (call,) = ollama_client(served).chat(model="tiny", messages=HELLO, tools=[WEATHER]).message.tool_calls
    assert call.function.name == "get_weather" and sent(served)["tools"] == [WEATHER]


@both_upstreams
def test_parallel_tool_calls_false_means_one_call_at_most(capable):
    served, client = capable
    second = {"name": "get_weather", "arguments": {"city": "Rome"}}
    served.fake.script(tokens=0, tool_calls=[CALL, second])
    kwargs = {"model": "tiny", "messages": HELLO, "tools": [WEATHER]}
    assert len(client.chat.completions.create(**kwargs).choices[0].message.tool_calls) == 2
    answer = client.chat.completions.create(parallel_tool_calls=False, **kwargs)
    if served.fake.kind == "ollama":  # Ollama cannot be told: the calls past the first are dropped
        (call,) = answer.choices[0].message.tool_calls
        assert json.loads(call.function.arguments) == {"city": "Paris"}
    else:  # the fake does not obey; a real server does
        assert served.fake.chat_calls()[-1].body["parallel_tool_calls"] is False


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
def test_a_tool_result_without_an_id_answers_the_next_call(capable):
    # Ollama's wire has no call ids: a result follows the calls it answers, in order
    served, _ = capable
    history = [
        *HELLO,
        {"role": "assistant", "content": "", "tool_calls": [{"function": CALL}, {"function": CALL}]},
        {"role": "tool", "content": "18 °C"},
        {"role": "tool", "content": "19 °C"},
    ]
    ollama_client(served).chat(model="tiny", messages=history)
    assistant, first, second = sent(served)["messages"][1:]
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert [first["tool_call_id"], second["tool_call_id"]] == ids and len(set(ids)) == 2


# --- stored sessions --------------------------------------------------------------------------


def test_a_session_stores_images_tool_calls_tool_results_and_thinking(served):
    sid = served.session()
    client = openai_client(served).with_options(default_headers={"X-Jarvis-Session": sid})
    served.fake.script(thinking=["Looking at it."], tokens=0, tool_calls=[CALL])
    content = [
        {"type": "text", "text": "Weather where this was taken?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
    ]
    first = [{"role": "user", "content": content}]
    answer = client.chat.completions.create(model="tiny", messages=first, tools=[WEATHER])
    (tc,) = answer.choices[0].message.tool_calls
    served.fake.script(tokens=["Sunny."])
    result = {"role": "tool", "tool_call_id": tc.id, "content": "18 °C, sunny"}
    assistant = answer.choices[0].message.model_dump(exclude_none=True)
    client.chat.completions.create(model="tiny", messages=[*first, assistant, result], tools=[WEATHER])
    prompt, called, tool, final = served.messages(sid)
    assert prompt["content"] == "Weather where this was taken?"
    (image,) = prompt["images"]
    got = requests.get(f"{served.url}/{image['url']}", headers=served.auth, timeout=HTTP_TIMEOUT)
    assert got.content == PNG and got.headers["Content-Type"] == "image/png"
    assert called["meta"]["thinking"] == "Looking at it."
    assert called["meta"]["tool_calls"] == [
        {"id": tc.id, "name": "get_weather", "arguments": tc.function.arguments}
    ]
    assert tool["role"] == "tool" and tool["content"] == "18 °C, sunny"
    assert tool["meta"]["tool_call_id"] == tc.id
    assert final["content"].endswith("Sunny.") and final["status"] == "completed"


def prompt(served, content: str, *images: str) -> requests.Response:
    """A native prompt with images, read to its end."""
    return requests.post(
        f"{served.url}/api/sessions/{served.session()}/messages",
        json={"content": content, "images": ["data:image/png;base64," + i for i in images]},
        headers=served.auth,
        timeout=HTTP_TIMEOUT,
    )


def test_removing_an_account_removes_the_images_only_its_chats_held(served):
    r = prompt(served, "?", PNG_B64)
    assert r.status_code == 200 and b"event: end" in r.content
    store = served.app.extensions["jarvis"].store
    with store.connect() as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1
    served.app.extensions["jarvis"].accounts.remove("ann")
    with store.connect() as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0


def test_a_prompt_of_images_alone_is_answered(served):
    r = prompt(served, "", PNG_B64)
    assert r.status_code == 200 and b'"status":"completed"' in r.content
    assert served.fake.chat_calls()[0].images == [PNG_B64]
    assert prompt(served, " ").status_code == 400  # nothing at all is still nothing
