"""What the conversation tests of every dialect send: a tiny image, a tool, a call of it, a schema."""

from __future__ import annotations

import base64
import time

import pytest

from .conftest import wait_for
from .fake_ollama import Script

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17  # enough of a PNG to be typed one
PNG_B64 = base64.b64encode(PNG).decode()
WEATHER = {  # in the shape OpenAI and Ollama share
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}  # as the fake upstreams are scripted
ALL = "tools,vision,thinking"  # what the OpenAI-compatible fake's models are configured to do
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def sent(served) -> dict:
    """The one chat request body the upstream received."""
    (call,) = served.fake.chat_calls()
    return call.body


def tool_turn_sent(served, assistant: dict, tool: dict, call_id: str, result: str) -> None:
    """The assistant's call of get_weather for Paris and the tool's ``result`` reached the upstream
    in its own shape: Ollama's result names the tool, the OpenAI-compatible one the call's id."""
    if served.fake.kind == "ollama":
        assert assistant["tool_calls"] == [{"function": CALL}]
        assert tool == {"role": "tool", "content": result, "tool_name": "get_weather"}
    else:
        assert assistant["tool_calls"][0]["id"] == call_id
        assert tool == {"role": "tool", "content": result, "tool_call_id": call_id}


# a streamed answer in each state a client may leave it in
CLOSE_STATES = pytest.mark.parametrize(
    "state, script",
    [
        ("streaming", Script(tokens=1000, interval_s=0.01)),
        ("loading", Script(load_delay_s=60)),
        ("stalled", Script(tokens=50, stall_after=2)),
    ],
)


def closing_closes_the_upstream(served, stream) -> None:
    """Close a client's ``stream`` and check the upstream call closed within half a second, its
    slot released: with no disconnect check the worker would read (or wait in recv) to the end."""
    call = served.fake.wait_for_calls(1)[0]
    began = time.monotonic()
    stream.close()
    assert call.wait_closed(2) and call.closed_by == "client"
    assert call.closed_at - began < 0.5
    wait_for(served.idle, what="slot released")
