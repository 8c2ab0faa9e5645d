"""OpenAI's chat-completions dialect: routes only (parse, call the core, answer).

The official ``openai`` client, an editor or an agent points ``base_url`` at
``/v1`` and sends its bearer token as ``api_key``.
"""

from __future__ import annotations

import json
import secrets
import time

from flask import Blueprint, current_app

from .. import sse
from ..errors import Interrupted, JarvisError
from ..events import End, Event, Heartbeat, Start, Text
from ..upstream import Options
from ..web import api
from . import common

bp = Blueprint("openai", __name__, url_prefix="/v1")

FINISH = {"completed": "stop", "length": "length"}
ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def jarvis():
    return current_app.extensions["jarvis"]


@bp.get("/models")
def models():
    return {
        "object": "list",
        "data": [
            {"id": m["name"], "object": "model", "created": 0, "owned_by": "jarvis"}
            for m in jarvis().upstream.models()
        ],
    }


@bp.post("/chat/completions")
def chat_completions():
    j = jarvis()
    call = parse_chat(common.read_json(j.config), j.config, j.upstream.default_model)
    framer = ChunkFramer(call.model, call.include_usage)
    return common.respond(call, framer, "openai", "text/event-stream", framer.completion)


def parse_chat(body: dict, config, default_model: str) -> common.Call:
    """A chat-completions request as a call to the core; 400 for anything Jarvis would not serve."""
    model = common.model_name(body.get("model"), default_model)
    messages = common.conversation(body.get("messages"), config, _content)
    if body.get("n") not in (None, 1):
        raise common.bad('only "n": 1 is supported', "n")
    stream = common.flag(body, "stream", False)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise common.bad('"stream_options" must be an object', "stream_options")
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    options = Options(
        temperature=common.number(body, "temperature", 0, 2),
        top_p=common.number(body, "top_p", 0, 1),
        max_tokens=common.number(body, limit, 1, 2**31, integer=True),
        stop=common.stops(body.get("stop"), "stop"),
        seed=common.number(body, "seed", -(2**63), 2**63 - 1, integer=True),
    )
    return common.Call(
        model=model,
        messages=messages,
        options=options,
        stream=stream,
        include_usage=common.flag(stream_options, "include_usage", False),
    )


def _content(content, param: str) -> str:
    """A string, or the array-of-parts form with text parts only."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise common.bad(f"{param} may hold only text parts", param)
            texts.append(part["text"])
        return "\n".join(texts)
    raise common.bad(f"{param} must be a string or a list of text parts", param)


def error_body(status: int, error: dict) -> dict:
    """OpenAI's error shape."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "error": {
            "message": error.get("message", ""),
            "type": kind,
            "param": error.get("param"),
            "code": error.get("code"),
        }
    }


@bp.errorhandler(Exception)
def error(e: Exception):
    native = api.jarvis_error(e) if isinstance(e, JarvisError) else api.internal_error(e)
    if isinstance(e, Interrupted):
        native.headers["x-should-retry"] = "false"  # the client would retry a 409 into the newer answer
    return common.rewrite_error(native, e, error_body)


class ChunkFramer:
    """OpenAI's stream: ``chat.completion.chunk`` events, a finish_reason, ``data: [DONE]``.

    A failure after the stream began is an ``{"error": ...}`` event and no ``[DONE]``: the
    official client raises it as an API error instead of taking the cut answer as finished.
    """

    def __init__(self, model: str, include_usage: bool = False):
        self.model = model
        self.include_usage = include_usage
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        # a text chunk differs only in its text: frame the rest once (NUL stands for the text)
        self._head, self._tail = self._chunk({"content": "\x00"}).split(b'"\\u0000"')

    def frame(self, ev: Event, id: str | None = None) -> bytes:
        if isinstance(ev, Text):
            return self._head + json.dumps(ev.text, ensure_ascii=False).encode() + self._tail
        if isinstance(ev, Heartbeat):
            return sse.HEARTBEAT
        if isinstance(ev, Start):
            return self._chunk({"role": "assistant", "content": ""})
        if isinstance(ev, End):
            failure = common.end_error(ev)
            if failure is not None:
                status = common.dialect_status(failure.http_status, failure.code)
                return _data(error_body(status, failure.to_dict()))
            out = self._chunk({}, FINISH[str(ev.status)])
            if self.include_usage:
                out += _data(self._object("chat.completion.chunk", [], usage(ev)))
            return out + b"data: [DONE]\n\n"
        return b""  # progress (queued, loading) has no place in this dialect

    def completion(self, text: str, end: End) -> dict:
        """The non-streaming answer."""
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
        choice["finish_reason"] = FINISH[str(end.status)]
        return self._object("chat.completion", [choice], usage(end))

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _data(self._object("chat.completion.chunk", [choice]))

    def _object(self, kind: str, choices: list, usage: dict | None = None) -> dict:
        out = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage
        return out


def usage(end: End) -> dict | None:
    counts = end.meta.get("usage") or {}
    if "prompt_tokens" not in counts and "completion_tokens" not in counts:
        return None
    prompt, completion = counts.get("prompt_tokens", 0), counts.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _data(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
