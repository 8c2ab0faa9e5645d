"""What the conversation tests of every dialect send: a tiny image, a tool, a call of it, a schema."""

from __future__ import annotations

import base64

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
