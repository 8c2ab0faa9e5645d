"""A fake OpenAI-compatible server: the fake Ollama's server, scripts and records, speaking OpenAI.

``POST /v1/chat/completions`` answers as server-sent events (a role chunk,
one chunk per token, a chunk with ``finish_reason``, a usage chunk, then
``data: [DONE]``), with thinking as ``reasoning_content`` deltas and tool calls
streamed by ``index`` as llama.cpp's server and vLLM send them; ``GET /v1/models``
lists the models, ``POST /v1/embeddings`` answers ``fake_wire.vector``s, and with ``api_key``
set every request must carry it as a bearer token. Jarvis reads it with
``JARVIS_OPENAI_URL`` set to ``fake.url + "/v1"``.
"""

from __future__ import annotations

import json
import socket

from tests import fake_wire
from tests.fake_ollama import OK_MODELS, Call, FakeOllama, Script
from tests.fake_wire import send_json

__all__ = ["FakeOpenAI", "Script"]


class OpenAIFrames:
    """The events of an OpenAI-compatible /v1/chat/completions stream."""

    content_type = b"text/event-stream"

    def format(self, body: dict) -> str | dict | None:
        """The structured output ``response_format`` asks for: "json", a JSON schema, or None."""
        asked = body.get("response_format") or {}
        if asked.get("type") == "json_schema":
            return (asked.get("json_schema") or {}).get("schema") or "json"
        return "json" if asked.get("type") == "json_object" else None

    def opening(self, model: str) -> list[bytes]:
        return [] if _legacy(model) else [_event(_chunk(model, {"role": "assistant", "content": ""}, None))]

    def token(self, model: str, text: str) -> bytes:
        return _event(_text(model, text, None) if _legacy(model) else _chunk(model, {"content": text}, None))

    def thinking(self, model: str, text: str) -> bytes:
        return _event(_chunk(model, {"reasoning_content": text}, None))

    def tool_calls(self, model: str, calls: list[dict]) -> list[bytes]:
        """Each call as a head (index, id, name, empty arguments), then its arguments in pieces."""
        frames = []
        for i, call in enumerate(calls):
            function = {"name": call["name"], "arguments": ""}
            head = {
                "index": i,
                "id": call.get("id") or f"call_fake{i}",
                "type": "function",
                "function": function,
            }
            frames.append(_event(_chunk(model, {"tool_calls": [head]}, None)))
            for piece in fake_wire.split(json.dumps(fake_wire.arguments(call)), 3):
                delta = {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
                frames.append(_event(_chunk(model, delta, None)))
        return frames

    def error(self, error: str) -> bytes:
        return _event(_error(error, "server_error", None))

    def closing(self, model: str, done_reason: str, tool_calls: bool, tokens: int) -> list[bytes]:
        usage = {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens}
        finish = "tool_calls" if tool_calls and done_reason == "stop" else done_reason
        last = _text(model, "", finish) if _legacy(model) else _chunk(model, {}, finish)
        return [
            _event(last),
            _event({**last, "choices": [], "usage": usage}),
            b"data: [DONE]\n\n",
        ]


class FakeOpenAI(FakeOllama):
    """Start with ``with FakeOpenAI() as fake:``; ``fake.api_url`` is what JARVIS_OPENAI_URL names."""

    CHAT_PATH = "/v1/chat/completions"
    streamed = (CHAT_PATH, "/v1/completions")
    embedding = ("/v1/embeddings",)
    kind = "openai"
    wire = OpenAIFrames()

    def __init__(self, models=OK_MODELS, key=None, api_key: str | None = None, capabilities=None):
        self.api_key = api_key
        super().__init__(models, key, capabilities=capabilities)
        self.api_url = self.url + "/v1"

    def _refusal(self, call: Call, s: Script, model: str) -> tuple[int, dict] | None:
        if not self._authorised(call.headers):
            return 401, _unauthorised(call.headers)
        if s.status != 200:
            return s.status, _error(s.error, "server_error", None)
        if model not in self.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return 404, _error(message, "invalid_request_error", "model_not_found")
        lacks = fake_wire.lacking(call.body, self.capabilities_of(model))
        if "tools" in lacks:  # as vLLM says it when started without a tool parser
            message = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
            return 400, _error(message, "invalid_request_error", None)
        if "vision" in lacks:  # as llama.cpp's server says it without a projector
            return 400, _error("image input is not supported by this server", "invalid_request_error", None)
        return None

    def _get(self, conn: socket.socket, call: Call) -> None:
        if not self._authorised(call.headers):
            send_json(conn, 401, _unauthorised(call.headers))
        elif call.path == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]
            send_json(conn, 200, {"object": "list", "data": data})
        elif call.path in self.embedding:
            self._embed(conn, call)
        else:
            send_json(conn, 404, _error(f"no route {call.path}", "invalid_request_error", None))

    def _embedding(self, call: Call) -> tuple[int, dict]:
        return _embeddings(call.body, self.models)

    def _authorised(self, headers: dict) -> bool:
        return self.api_key is None or headers.get("authorization") == f"Bearer {self.api_key}"


def _embeddings(body: dict, models: list[str]) -> tuple[int, dict]:
    """``/v1/embeddings`` as llama.cpp's server and vLLM answer it (floats only)."""
    status, found = fake_wire.embedded(body, models)
    if status != 200:
        return status, _error(found, "invalid_request_error", "model_not_found" if status == 404 else None)
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(found)]
    usage = {"prompt_tokens": 3 * len(found), "total_tokens": 3 * len(found)}
    return 200, {"object": "list", "data": data, "model": body["model"], "usage": usage}


def _unauthorised(headers: dict) -> dict:
    # like some servers, it echoes the key it was given: Jarvis must not pass that on
    presented = headers.get("authorization", "").removeprefix("Bearer ")
    return _error(f"Incorrect API key provided: {presented}", "invalid_request_error", "invalid_api_key")


def _chunk(model: str, delta: dict, finish_reason: str | None) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _legacy(model: str) -> bool:
    return getattr(model, "path", "") == "/v1/completions"


def _text(model: str, text: str, finish_reason: str | None) -> dict:
    """A chunk of a legacy /v1/completions stream."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": model, "choices": [choice]}


def _error(message: str, kind: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"
