"""Every documented request field of both dialects is either honoured or refused, never dropped.

The tables below name each field of OpenAI's chat completions and of Ollama's /api/chat and
/api/generate (and of their messages and options), with a value to send and what honouring it
looks like at the upstream (the fake Ollama records every request body). A refused field answers
400 naming it. The first test checks the tables cover every field the dialects know, so a field
added there without a test here fails.
"""

from __future__ import annotations

import logging

import pytest
import requests

from jarvis.dialects import ollama as ollama_dialect
from jarvis.dialects import openai as openai_dialect

from .conftest import HTTP_TIMEOUT

HI = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


def opt(key, value):
    return lambda body: body["options"][key] == value


# field: (what to add to the request, what the upstream must have been sent)
OPENAI_HONOURED = {
    "model": ({"model": "tiny"}, lambda b: b["model"] == "tiny"),
    "messages": ({}, lambda b: b["messages"] == HI),
    "stream": ({"stream": True}, lambda b: b["stream"] is True),
    "stream_options": ({"stream": True, "stream_options": {"include_usage": True}}, None),
    "temperature": ({"temperature": 0.5}, opt("temperature", 0.5)),
    "top_p": ({"top_p": 0.5}, opt("top_p", 0.5)),
    "max_tokens": ({"max_tokens": 7}, opt("num_predict", 7)),
    "max_completion_tokens": ({"max_completion_tokens": 8}, opt("num_predict", 8)),
    # Jarvis matches stop sequences itself (tests/test_stop_sequences.py): the backend would hide them
    "stop": ({"stop": ["x"]}, lambda b: "stop" not in (b.get("options") or {})),
    "seed": ({"seed": 3}, opt("seed", 3)),
    "frequency_penalty": ({"frequency_penalty": 0.5}, opt("frequency_penalty", 0.5)),
    "presence_penalty": ({"presence_penalty": 0.25}, opt("presence_penalty", 0.25)),
    "tools": ({"tools": [WEATHER]}, lambda b: b["tools"] == [WEATHER]),
    "tool_choice": ({"tools": [WEATHER], "tool_choice": "none"}, lambda b: "tools" not in b),
    "response_format": ({"response_format": {"type": "json_object"}}, lambda b: b["format"] == "json"),
    "reasoning_effort": ({"reasoning_effort": "low"}, lambda b: b["think"] == "low"),
    "user": ({"user": "u-17"}, "u-17"),  # logged with the call
    "safety_identifier": ({"safety_identifier": "s-18"}, "s-18"),
    # Ollama cannot be told: Jarvis keeps the first call (test_conversation.py checks it)
    "parallel_tool_calls": (
        {"tools": [WEATHER], "parallel_tool_calls": False},
        lambda b: b["tools"] == [WEATHER],
    ),
}
OPENAI_REFUSED = {
    "n": 2,
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100},
    "audio": {"voice": "alloy", "format": "mp3"},
    "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "x"},
    "store": True,
    "metadata": {"k": "v"},
    "service_tier": "flex",
    "prompt_cache_key": "k",
    "verbosity": "low",
    "web_search_options": {},
    "functions": [WEATHER["function"]],
    "function_call": "auto",
}
OPENAI_MESSAGE_REFUSED = {
    "name": "ann",
    "refusal": "no",
    "audio": {"id": "a"},
    "function_call": {"name": "f"},
}

OLLAMA_HONOURED = {
    "model": ({"model": "tiny"}, lambda b: b["model"] == "tiny"),
    "messages": ({}, lambda b: b["messages"] == HI),
    "stream": ({"stream": False}, None),
    "format": ({"format": SCHEMA}, lambda b: b["format"] == SCHEMA),
    "options": ({"options": {"num_ctx": 4096}}, opt("num_ctx", 4096)),
    "keep_alive": ({"keep_alive": "1m"}, lambda b: b["keep_alive"] == "1m"),
    "think": ({"think": True}, lambda b: b["think"] is True),
    "tools": ({"tools": [WEATHER]}, lambda b: b["tools"] == [WEATHER]),
}
GENERATE_HONOURED = {"prompt", "system", "images", "suffix", "raw"} | set(OLLAMA_HONOURED) - {
    "messages",
    "tools",
}
GENERATE_REFUSED = {"template": "{{ .Prompt }}", "context": [1, 2]}
OPTION_VALUES = {
    "seed": 7,
    "stop": ["x"],
    "num_predict": 5,
    "use_mmap": True,
    "numa": False,
    "penalize_newline": True,
}


def test_the_tables_cover_every_field_the_dialects_know():
    f = openai_dialect.FIELDS
    assert set(OPENAI_HONOURED) == f.honoured and set(OPENAI_REFUSED) == set(f.refused)
    m = openai_dialect.MESSAGE_FIELDS
    assert set(OPENAI_MESSAGE_REFUSED) == set(m.refused)
    assert set(OLLAMA_HONOURED) == ollama_dialect.CHAT_FIELDS.honoured
    assert GENERATE_HONOURED == ollama_dialect.GENERATE_FIELDS.honoured
    assert set(GENERATE_REFUSED) == set(ollama_dialect.GENERATE_FIELDS.refused)


# each walk starts a server per field: the whole suite runs them, the everyday one only the table check
walk = pytest.mark.slow


def post(served, path: str, body: dict) -> requests.Response:
    r = requests.post(served.url + path, json=body, headers=served.auth, timeout=HTTP_TIMEOUT)
    _ = r.content  # read it all: a streamed answer ends before the next request
    return r


@walk
@pytest.mark.parametrize("name", sorted(OPENAI_HONOURED))
def test_each_openai_field_is_honoured(served, name, caplog):
    extra, honoured = OPENAI_HONOURED[name]
    with caplog.at_level(logging.INFO, logger="jarvis"):
        r = post(served, "/v1/chat/completions", {"model": "tiny", "messages": HI, **extra})
    assert r.status_code == 200, r.text
    body = served.fake.chat_calls()[-1].body
    if isinstance(honoured, str):
        said = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "dialect_call"]
        assert [f["end_user"] for f in said] == [honoured]
    elif honoured is not None:
        assert honoured(body), body
    if name == "stream_options":
        assert '"usage"' in r.text.split("data: [DONE]")[0].rsplit("data: ", 1)[-1]


@walk
@pytest.mark.parametrize("name", sorted(OPENAI_REFUSED))
def test_each_refused_openai_field_is_a_400_naming_it(served, name):
    r = post(served, "/v1/chat/completions", {"model": "tiny", "messages": HI, name: OPENAI_REFUSED[name]})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == name and error["code"] == "unsupported", error
    assert served.fake.chat_calls() == []


@walk
@pytest.mark.parametrize("name", sorted(OPENAI_MESSAGE_REFUSED))
def test_each_refused_openai_message_field_is_a_400_naming_it(served, name):
    message = {"role": "assistant", "content": "x", name: OPENAI_MESSAGE_REFUSED[name]}
    r = post(served, "/v1/chat/completions", {"model": "tiny", "messages": [*HI, message, *HI]})
    assert r.status_code == 400 and r.json()["error"]["param"] == f"messages[1].{name}"
    assert served.fake.chat_calls() == []


@walk
@pytest.mark.parametrize("name", sorted(OLLAMA_HONOURED))
def test_each_ollama_chat_field_is_honoured(served, name):
    extra, honoured = OLLAMA_HONOURED[name]
    r = post(served, "/api/chat", {"model": "tiny", "messages": HI, **extra})
    assert r.status_code == 200, r.text
    if honoured is not None:
        assert honoured(served.fake.chat_calls()[-1].body)
    if name == "stream":
        assert r.json()["done"] is True  # one object, not a stream


@walk
@pytest.mark.parametrize("key", sorted(ollama_dialect.PASSED_OPTIONS | ollama_dialect.MAPPED_OPTIONS))
def test_each_ollama_option_reaches_ollama(served, key):
    value = OPTION_VALUES.get(key, 0.5 if key in ollama_dialect.MAPPED_OPTIONS else 2)
    r = post(served, "/api/chat", {"model": "tiny", "messages": HI, "stream": False, "options": {key: value}})
    assert r.status_code == 200, r.text
    sent = served.fake.chat_calls()[-1].body.get("options") or {}
    assert sent == ({} if key == "stop" else {key: value})  # Jarvis matches "stop" itself


@walk
@pytest.mark.parametrize("name", sorted(GENERATE_REFUSED))
def test_each_refused_generate_field_is_a_400_naming_it(served, name):
    r = post(served, "/api/generate", {"model": "tiny", "prompt": "hi", name: GENERATE_REFUSED[name]})
    assert r.status_code == 400 and repr(name) in r.json()["error"]
    assert served.fake.chat_calls() == []


@walk
def test_generate_fields_are_honoured(served):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    body = {"model": "tiny", "prompt": "hi", "system": "be brief", "images": [png], "format": "json",
            "think": False, "keep_alive": 0, "options": {"top_k": 3}, "stream": False}  # fmt: skip
    r = post(served, "/api/generate", body)
    assert r.status_code == 200 and r.json()["done"], r.text
    sent = served.fake.chat_calls()[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi", "images": [png]},
    ]
    assert sent["format"] == "json" and sent["think"] is False and sent["keep_alive"] == 0
    assert sent["options"] == {"top_k": 3}


@walk
@pytest.mark.parametrize("extra", [{"suffix": "\n    return x"}, {"raw": True}])
def test_generate_suffix_and_raw_send_the_prompt_as_it_is(served, extra):
    served.fake.capabilities["tiny"] = ["completion", "insert"]
    r = post(served, "/api/generate", {"model": "tiny", "prompt": "def f(x):", "stream": False, **extra})
    assert r.status_code == 200 and r.json()["done"], r.text
    (call,) = [c for c in served.fake.calls if c.path == "/api/generate"]
    assert call.body["prompt"] == "def f(x):"
    assert call.body.get("suffix") == extra.get("suffix") and call.body.get("raw") == extra.get("raw")
    r = post(served, "/api/generate", {"model": "tiny", "prompt": "p", "system": "s", **extra})
    assert r.status_code == 400 and "system" in r.json()["error"]


# a function tool's fields, in each dialect's shape: all honoured (strict: tests/test_strict_tools.py)
FUNCTION_HONOURED = {"name", "description", "parameters", "strict"}


def test_every_function_tool_field_is_honoured_or_refused_in_each_dialect():
    from jarvis.dialects import anthropic, fields, responses

    assert fields.FUNCTION_FIELDS.honoured == FUNCTION_HONOURED and not fields.FUNCTION_FIELDS.refused
    assert responses.TOOL_FIELDS.honoured == FUNCTION_HONOURED | {"type"}
    assert set(responses.TOOL_FIELDS.refused) == {"defer_loading"}
    assert anthropic.TOOL_FIELDS.honoured == {
        "name",
        "description",
        "input_schema",
        "cache_control",
        "type",
        "strict",
    }
    assert set(anthropic.TOOL_FIELDS.refused) == {"input_examples", "defer_loading", "allowed_callers"}


@walk
@pytest.mark.parametrize("strict, status", [(True, 200), (False, 200), ("yes", 400)])
def test_a_function_tools_strict_is_honoured_and_checked(served, strict, status):
    tool = {"type": "function", "function": {**WEATHER["function"], "strict": strict}}
    r = post(served, "/v1/chat/completions", {"model": "tiny", "messages": HI, "tools": [tool]})
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["param"] == "tools[0].function.strict"
    else:  # Jarvis checks the calls itself: the backend is sent the tool without it
        assert served.fake.chat_calls()[-1].body["tools"] == [WEATHER]
