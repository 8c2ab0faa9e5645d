"""OpenAI's legacy ``/v1/completions`` through Jarvis with the official client: a raw prompt (and a
``suffix`` for fill-in-the-middle) to Ollama's ``/api/generate`` or an OpenAI-compatible server's
``/completions``, streamed and not, through the same lifecycle as chat."""

from __future__ import annotations

import time

import openai
import pytest
import requests

from tests.conftest import HTTP_TIMEOUT, both_upstreams, wait_for
from tests.fake_ollama import Script
from tests.fake_wire import ALL_CAPABILITIES


def completion_calls(fake) -> list:
    return [c for c in fake.calls if c.path in ("/api/generate", "/v1/completions")]


@both_upstreams
def test_a_completion_continues_the_prompt(oai, served):
    served.fake.script(tokens=3)
    answer = oai.completions.create(
        model="tiny", prompt="def add(a, b):", max_tokens=8, temperature=0.2, stop=["\n\n"]
    )
    assert answer.object == "text_completion" and answer.model == "tiny"
    (choice,) = answer.choices
    assert choice.text == "tok0 tok1 tok2 " and choice.finish_reason == "stop" and choice.index == 0
    assert answer.usage.completion_tokens == 3
    (call,) = completion_calls(served.fake)
    assert call.body["prompt"] == "def add(a, b):"
    if call.path == "/api/generate":
        assert call.body["options"] == {"temperature": 0.2, "num_predict": 8}  # Jarvis matches "stop"
    else:
        assert (call.body["max_tokens"], call.body["temperature"], call.body.get("stop")) == (8, 0.2, None)
    assert served.idle() and served.sessions() == []


@both_upstreams
def test_a_streamed_completion_ends_with_a_finish_reason_and_done(oai, served):
    served.fake.script(tokens=4, done_reason="length")
    chunks = list(oai.completions.create(model="tiny", prompt="once upon", stream=True, max_tokens=4))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 "
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) <= {None}
    assert all(c.object == "text_completion" for c in chunks)


@both_upstreams
def test_the_suffix_reaches_the_upstream_for_fill_in_the_middle(make_served, fake):
    fake.capabilities["tiny"] = [*ALL_CAPABILITIES, "insert"]
    served = make_served(openai_capabilities="tools,insert")
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0, timeout=5)
    answer = client.completions.create(model="tiny", prompt="def f(", suffix="\n    return x\n", max_tokens=4)
    client.close()
    assert answer.choices[0].text
    (call,) = completion_calls(fake)
    assert (call.body["prompt"], call.body["suffix"]) == ("def f(", "\n    return x\n")


def test_a_suffix_for_a_model_that_cannot_insert_is_refused_naming_it(oai, served):
    served.fake.capabilities["tiny"] = ["completion"]
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="tiny", prompt="def f(", suffix="x")
    assert e.value.body["param"] == "suffix"
    assert completion_calls(served.fake) == []


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"echo": True}, "echo"),
        ({"n": 2}, "n"),
        ({"logprobs": 2}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_what_completions_cannot_honour_is_refused(served, extra, param):
    body = {"model": "tiny", "prompt": "x", **extra}
    r = requests.post(served.url + "/v1/completions", json=body, headers=served.auth, timeout=HTTP_TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert completion_calls(served.fake) == []


def test_completions_want_a_credential(served):
    r = requests.post(
        served.url + "/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=HTTP_TIMEOUT
    )
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert completion_calls(served.fake) == []


@pytest.mark.parametrize(
    "state, script",
    [
        ("streaming", Script(tokens=1000, interval_s=0.01)),
        ("loading", Script(load_delay_s=60)),
        ("stalled", Script(tokens=50, stall_after=2)),
    ],
)
def test_closing_a_completion_stream_closes_the_upstream(oai, served, state, script):
    # with no disconnect check the worker would read (or wait in recv) to the end of the answer
    served.fake.script(script)
    stream = oai.completions.create(model="tiny", prompt="go", stream=True)
    if state != "loading":
        assert next(iter(stream)).choices[0].text.startswith("tok0 ")
    call = wait_for(lambda: (completion_calls(served.fake) or [None])[0], what="the upstream call")
    began = time.monotonic()
    stream.close()
    assert call.wait_closed(2) and call.closed_by == "client"
    assert call.closed_at - began < 0.5
    wait_for(served.idle, what="slot released")
