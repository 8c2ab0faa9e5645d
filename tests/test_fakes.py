"""The fake upstreams speak the wire formats the rest of the suite relies on.

Each test sends a request straight to a fake (no Jarvis) and reads what a real Ollama or an
OpenAI-compatible server (llama.cpp's server, vLLM) would send: thinking, tool calls, JSON for a
format, image counts, refusals for what a model cannot do, and Ollama's /api/show.
"""

from __future__ import annotations

import json
import socket
import tracemalloc

import ollama
import openai
import pytest
import requests
from pydantic import BaseModel

from tests.fake_ollama import FakeOllama
from tests.fake_openai import FakeOpenAI

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(params=["ollama", "openai"])
def each(request):
    """Each fake upstream in turn."""
    with (FakeOllama if request.param == "ollama" else FakeOpenAI)() as fake:
        yield fake


def chat(fake: FakeOllama, content: object = "hi", **body) -> requests.Response:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": content}], **body}
    return requests.post(fake.url + fake.CHAT_PATH, json=body, timeout=5)


def frames(r: requests.Response) -> list:
    """Ollama's NDJSON lines, or the payloads of the SSE events (JSON, and the closing "[DONE]")."""
    assert r.status_code == 200, r.text
    if r.headers["content-type"] == "application/x-ndjson":
        return [json.loads(line) for line in r.text.splitlines()]
    payloads = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def deltas(got: list) -> list[dict]:
    return [f["choices"][0]["delta"] for f in got if f != "[DONE]" and f["choices"]]


def pieces(got: list, kind: str = "content") -> list[str]:
    """The text (or thinking) pieces in the order they came, in either wire form."""
    if isinstance(got[-1], dict):  # Ollama
        return [m[kind] for f in got if (m := f["message"]).get(kind)]
    return [d[kind] for d in deltas(got) if d.get({"thinking": "reasoning_content"}.get(kind, kind))]


def answer(got: list) -> str:
    return "".join(pieces(got))


# long scripts


def test_a_long_script_costs_the_fake_no_memory_up_front(each):
    # 64 answers of 100,000 tokens each made as lists were millions of objects: the fake's garbage
    # collector then held all its threads for hundreds of milliseconds, and a benchmark timed that
    # pause as Jarvis's (an upstream close seen 500 ms after Jarvis's shutdown)
    from tests.fake_ollama import Script

    tracemalloc.start()
    try:
        made = each._pieces(Script(tokens=100_000), {"messages": []}, "llama3.2")
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(made) == 100_000
    assert size < 100_000, f"the script's pieces took {size} bytes before one was sent"
    texts = Script(tokens=100_000).texts()
    assert (texts[0], texts[-1], texts[1:3]) == ("tok0 ", "tok99999 ", ["tok1 ", "tok2 "])
    each.script(tokens=3)
    assert answer(frames(chat(each))) == "tok0 tok1 tok2 "


# thinking


def test_ollama_streams_thinking_lines_before_the_text():
    with FakeOllama() as fake:
        fake.script(thinking=["Let me ", "think."], tokens=2)
        got = frames(chat(fake, think=True))
    assert [f["message"] for f in got[:2]] == [
        {"role": "assistant", "content": "", "thinking": "Let me "},
        {"role": "assistant", "content": "", "thinking": "think."},
    ]
    assert [f["message"]["content"] for f in got[2:4]] == ["tok0 ", "tok1 "]
    assert got[-1]["done"] is True and got[-1]["done_reason"] == "stop"


def test_openai_streams_reasoning_content_before_the_text():
    with FakeOpenAI() as fake:
        fake.script(thinking=["Let me ", "think."], tokens=2)
        got = deltas(frames(chat(fake)))
    assert got[1:3] == [{"reasoning_content": "Let me "}, {"reasoning_content": "think."}]
    assert got[3:5] == [{"content": "tok0 "}, {"content": "tok1 "}]


def test_a_stall_counts_thinking_chunks_so_a_test_can_stop_mid_thought(each):
    each.script(thinking=["a", "b", "c"], stall_after=2)
    url = each.url.removeprefix("http://")
    host, port = url.split(":")
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (each.CHAT_PATH.encode(), len(body), body)
        )
        (call,) = each.wait_for_calls(1)
        assert not call.wait_closed(0.2)  # stalled after two thinking chunks
    assert call.wait_closed(5), "the fake never saw the client leave its stall"
    assert call.closed_by == "client" and call.tokens_sent == 2


# tool calls


def test_ollama_sends_tool_calls_on_one_line_after_the_text():
    with FakeOllama() as fake:
        fake.script(tokens=1, tool_calls=[WEATHER, {"name": "now", "arguments": {}, "id": "call_7"}])
        got = frames(chat(fake, tools=TOOLS))
        (call,) = fake.chat_calls()
    assert got[0]["message"]["content"] == "tok0 "
    assert got[1]["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
            {"id": "call_7", "function": {"name": "now", "arguments": {}}},
        ],
    }
    assert got[2]["done"] is True and got[2]["done_reason"] == "stop" and len(got) == 3
    assert call.body["tools"] == TOOLS


def test_openai_streams_each_tool_call_as_a_head_then_argument_pieces():
    with FakeOpenAI() as fake:
        fake.script(tokens=0, tool_calls=[WEATHER, {"name": "now", "arguments": {}, "id": "call_7"}])
        got = frames(chat(fake, tools=TOOLS, tool_choice="auto"))
    calls = [d["tool_calls"][0] for d in deltas(got) if "tool_calls" in d]
    heads = [c for c in calls if "id" in c]
    assert [(h["index"], h["type"], h["function"]) for h in heads] == [
        (0, "function", {"name": "get_weather", "arguments": ""}),
        (1, "function", {"name": "now", "arguments": ""}),
    ]
    assert heads[0]["id"].startswith("call_") and heads[1]["id"] == "call_7"
    for i, args in enumerate([WEATHER["arguments"], {}]):
        parts = [c["function"]["arguments"] for c in calls if c["index"] == i and "id" not in c]
        assert 2 <= len(parts) <= 3 and json.loads("".join(parts)) == args
    assert answer(got) == ""
    assert got[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert got[-2]["usage"]["completion_tokens"] == 1 and got[-1] == "[DONE]"


# structured output


class City(BaseModel):
    name: str
    population: int


class Report(BaseModel):
    city: City
    warm: bool
    temperature: float
    tags: list[str]
    unit: str = "celsius"


def test_a_schema_format_answers_json_that_validates(each):
    schema = Report.model_json_schema()  # nested models under $defs, as LangChain sends them
    form = {"format": schema} if each.kind == "ollama" else _schema_format(schema)
    got = frames(chat(each, **form))
    assert len(pieces(got)) > 1  # streamed in a few tokens
    assert Report.model_validate_json(answer(got)) == Report(
        city=City(name="x", population=1), warm=True, temperature=1.5, tags=[]
    )


def test_a_schema_answer_holds_the_required_properties_and_enums_first_values(each):
    schema = {
        "type": "object",
        "properties": {"kind": {"type": "string", "enum": ["cat", "dog"]}, "n": {"type": "integer"}},
        "required": ["kind"],
    }
    form = {"format": schema} if each.kind == "ollama" else _schema_format(schema)
    assert json.loads(answer(frames(chat(each, **form)))) == {"kind": "cat"}


def test_plain_json_answers_an_object_and_no_format_leaves_the_text(each):
    form = {"format": "json"} if each.kind == "ollama" else {"response_format": {"type": "json_object"}}
    assert json.loads(answer(frames(chat(each, **form)))) == {"answer": "tok"}
    assert answer(frames(chat(each))) == "tok0 tok1 tok2 tok3 tok4 "
    each.script(json_answer=False, tokens=["not json"])
    assert answer(frames(chat(each, **form))) == "not json"


def _schema_format(schema: dict) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}}


# images


def test_ollama_counts_the_images_it_was_sent():
    with FakeOllama() as fake:
        messages = [
            {"role": "user", "content": "what is this?", "images": [PNG]},
            {"role": "assistant", "content": "a dot"},
            {"role": "user", "content": "and these?", "images": ["QUFB", "QkJC"]},
        ]
        fake.script(tokens=["ok"])
        got = frames(
            requests.post(fake.url + "/api/chat", json={"model": "tiny", "messages": messages}, timeout=5)
        )
        (call,) = fake.chat_calls()
    assert pieces(got) == ["I see 3 image(s). ", "ok"]
    assert call.images == [PNG, "QUFB", "QkJC"]


def test_openai_counts_image_url_parts_and_keeps_their_payloads():
    with FakeOpenAI() as fake:
        content = [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ]
        got = frames(chat(fake, content, max_tokens=9))
        (call,) = fake.chat_calls()
    assert answer(got).startswith("I see 1 image(s). tok0 ")
    assert call.images == [PNG] and call.prompt == "what is this?" and call.body["max_tokens"] == 9


# what a model cannot do, and what Ollama says of its models


@pytest.mark.parametrize(
    "body, error",
    [
        ({"tools": TOOLS}, "registry.ollama.ai/library/tiny:latest does not support tools"),
        ({"think": True}, '"tiny" does not support thinking'),
        (
            {"messages": [{"role": "user", "content": "?", "images": [PNG]}]},
            "this model is missing data required",
        ),
    ],
)
def test_ollama_refuses_what_a_model_lacks_with_400(body, error):
    with FakeOllama(capabilities={"tiny": ["completion"]}) as fake:
        r = requests.post(fake.url + "/api/chat", json={"model": "tiny", "messages": [], **body}, timeout=5)
        assert r.status_code == 400 and r.json()["error"].startswith(error)
        assert frames(chat(fake, **body))[-1]["done"]  # llama3.2 keeps every capability
        refused, served = fake.chat_calls()
        assert refused.tokens_sent == 0 and served.tokens_sent >= 5


def test_openai_refuses_tools_and_images_a_model_lacks_in_its_error_shape():
    with FakeOpenAI(capabilities={"llama3.2": ["completion"]}) as fake:
        image = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
        for r in (chat(fake, tools=TOOLS), chat(fake, image)):
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert frames(chat(fake, model="tiny", tools=TOOLS))[-1] == "[DONE]"


def test_ollama_show_tells_each_models_capabilities():
    with FakeOllama(capabilities={"tiny": ["completion"]}) as fake:
        show = requests.post(fake.url + "/api/show", json={"model": "llama3.2:latest"}, timeout=5).json()
        tiny = requests.post(fake.url + "/api/show", json={"model": "tiny"}, timeout=5).json()
        gone = requests.post(fake.url + "/api/show", json={"model": "nope"}, timeout=5)
        ps = requests.get(fake.url + "/api/ps", timeout=5)
    assert show["capabilities"] == ["completion", "tools", "thinking", "vision"]
    assert show["details"]["family"] == "llama" and show["model_info"]["llama.context_length"] == 8192
    assert tiny["capabilities"] == ["completion"]
    assert (gone.status_code, gone.json()) == (404, {"error": "model 'nope' not found"})
    assert [m["model"] for m in ps.json()["models"]] == ["llama3.2:latest", "tiny:latest"]  # all loaded


def test_every_field_sent_is_recorded_as_sent():
    with FakeOllama() as fake:
        sent = {"options": {"num_ctx": 8192, "seed": 3}, "keep_alive": "5m", "think": True, "format": "json"}
        frames(chat(fake, **sent))
        (call,) = fake.chat_calls()
    assert {k: call.body[k] for k in sent} == sent


# the official clients read the fakes as they read the real servers


def test_the_ollama_client_reads_thinking_tool_calls_and_capabilities():
    with FakeOllama() as fake:
        fake.script(thinking=["hm"], tokens=1, tool_calls=[WEATHER])
        client = ollama.Client(host=fake.url, timeout=5)
        parts = list(client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True))
        capabilities = client.show("llama3.2").capabilities
    assert [p.message.thinking for p in parts if p.message.thinking] == ["hm"]
    (call,) = [c for p in parts for c in p.message.tool_calls or []]
    assert (call.function.name, call.function.arguments) == ("get_weather", WEATHER["arguments"])
    assert parts[-1].done_reason == "stop" and "vision" in capabilities


def test_the_openai_client_assembles_the_streamed_tool_calls():
    with FakeOpenAI() as fake:
        fake.script(tokens=0, tool_calls=[WEATHER, {"name": "now", "arguments": {}}])
        client = openai.OpenAI(base_url=fake.api_url, api_key="unused", timeout=5, max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        with client.chat.completions.stream(model="llama3.2", messages=messages, tools=TOOLS) as stream:
            choice = stream.get_final_completion().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_weather", WEATHER["arguments"]),
        ("now", {}),
    ]
