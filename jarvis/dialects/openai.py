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
from ..conversation import Chat, Message, Options, ToolCall
from ..events import End, Event, Heartbeat, Start, Text, Thinking
from . import common, fields

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
    call = parse_chat(fields.read_json(j.config), j.config, j.upstream.default_model)
    framer = ChunkFramer(call.model, call.include_usage)
    return common.respond(call, framer, "openai", "text/event-stream", framer.completion)


# every request field of chat completions, as OpenAI's reference lists them: honoured, or refused
FIELDS = fields.Fields(
    honoured={
        "model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
        "max_completion_tokens", "stop", "seed", "frequency_penalty", "presence_penalty", "tools",
        "tool_choice", "response_format", "reasoning_effort", "user", "safety_identifier",
        "parallel_tool_calls",
    },
    refused={
        "n": "one choice per answer",
        "logprobs": "the backends give no log probabilities through Jarvis",
        "top_logprobs": "the backends give no log probabilities through Jarvis",
        "logit_bias": "Ollama has no logit bias",
        "audio": "answers are text",
        "modalities": "answers are text",
        "prediction": "predicted outputs are not supported",
        "store": "Jarvis keeps a conversation only in a session named by X-Jarvis-Session",
        "metadata": "Jarvis keeps a conversation only in a session named by X-Jarvis-Session",
        "service_tier": "one tier",
        "prompt_cache_key": "the backend caches prompts itself",
        "verbosity": "the backends have no verbosity setting",
        "web_search_options": "Jarvis searches nothing on a caller's behalf",
        "functions": 'the deprecated "functions"; send "tools"',
        "function_call": 'the deprecated "function_call"; send "tool_choice"',
    },
    accepted={
        "n": (1,), "logprobs": (False,), "store": (False,),
        "modalities": (["text"],), "service_tier": ("auto", "default"),
    },
)  # fmt: skip
MESSAGE_FIELDS = fields.Fields(
    {"role", "content", "tool_calls", "tool_call_id", "reasoning_content"},
    {"name": "participant names are not passed to the model", "refusal": "a refusal is not sent back",
     "audio": "answers are text", "function_call": 'the deprecated "function_call"; send "tool_calls"'},
)  # fmt: skip
REASONING = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high"}


def parse_chat(body: dict, config, default_model: str) -> common.Call:
    """A chat-completions request as a call to the core; 400 for anything Jarvis would not serve."""
    FIELDS.check(body)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise fields.bad('"stream_options" must be an object', "stream_options")
    for name in ("user", "safety_identifier"):  # who the caller's user is: logged with the stream
        if not isinstance(body.get(name) or "", str):
            raise fields.bad(f'"{name}" must be a string', name)
    chat = Chat(
        model=fields.model_name(body.get("model"), default_model),
        messages=fields.conversation(body.get("messages"), config, _message),
        options=_options(body),
        tools=fields.tools(body.get("tools")),
        **fields.output_format(body.get("response_format"), "response_format", nested=True),
        parallel_tool_calls=fields.flag(body, "parallel_tool_calls", True),
        think=_reasoning(body.get("reasoning_effort")),
        **_tool_choice(body.get("tool_choice")),
    )
    return common.Call(
        chat,
        fields.flag(body, "stream", False),
        fields.flag(stream_options, "include_usage", False),
        names={"images": "messages", "think": "reasoning_effort", "format": "response_format"},
        end_user=body.get("user") or body.get("safety_identifier"),
    )


def _options(body: dict) -> Options:
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return Options(
        temperature=fields.number(body, "temperature", 0, 2),
        top_p=fields.number(body, "top_p", 0, 1),
        max_tokens=fields.number(body, limit, 1, 2**31, integer=True),
        stop=fields.stops(body.get("stop"), "stop"),
        seed=fields.number(body, "seed", -(2**63), 2**63 - 1, integer=True),
        frequency_penalty=fields.number(body, "frequency_penalty", -2, 2),
        presence_penalty=fields.number(body, "presence_penalty", -2, 2),
    )


def _message(m: dict, where: str, images: fields.ImageBudget) -> Message:
    """One chat-completions message in the core's shape."""
    MESSAGE_FIELDS.check(m, f"{where}.")
    role, content = m["role"], m.get("content")
    if content is None and not (role == "assistant" and m.get("tool_calls")):
        raise fields.bad(f"{where} has no content", f"{where}.content")
    out: Message = {"role": role, "content": ""}
    texts, pictures = _parts(content, f"{where}.content", images, role == "user")
    out["content"] = "\n".join(texts)
    if pictures:
        out["images"] = pictures
    if m.get("tool_calls") is not None:
        out["tool_calls"] = _calls(m["tool_calls"], f"{where}.tool_calls", role)
    if role == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise fields.bad(f"{where}.tool_call_id must name the call it answers", f"{where}.tool_call_id")
        out["tool_call_id"] = m["tool_call_id"]
    if isinstance(m.get("reasoning_content"), str) and role == "assistant":
        out["thinking"] = m["reasoning_content"]
    return out


def _parts(content, param: str, images: fields.ImageBudget, user: bool) -> tuple[list[str], list]:
    """The texts and images of a content: a string, or an array of parts (images on a user's only)."""
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise fields.bad(f"{param} must be a string or a list of parts", param)
    texts, pictures = [], []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and user:
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            pictures.append(images.image(url, f"{where}.image_url.url", bare=False))
        elif kind in ("image_url", "input_audio", "file", "refusal"):
            raise fields.unsupported(where, f"{kind!r} parts are not supported here")
        else:
            kinds = "a text part" + (" or an image_url part" if user else "")
            raise fields.bad(f"{where} must be {kinds}", where)
    return texts, pictures


def _calls(raw, param: str, role: str) -> list[ToolCall]:
    if role != "assistant" or not isinstance(raw, list):
        raise fields.bad(f"{param} must be a list, on an assistant's message", param)
    out = []
    for i, call in enumerate(raw):
        where = f"{param}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise fields.bad(f"{where}.function must be an object", f"{where}.function")
        out.append(fields.tool_call(function.get("name"), function.get("arguments"), call.get("id"), where))
    return out


def _tool_choice(raw) -> dict:
    """``tool_choice`` as the core's ``tool_choice`` and ``tool_name``."""
    if raw is None:
        return {}
    if raw in ("auto", "none", "required"):
        return {"tool_choice": raw}
    function = raw.get("function") if isinstance(raw, dict) and raw.get("type") == "function" else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"tool_choice": "required", "tool_name": function["name"]}
    raise fields.bad('"tool_choice" must be "auto", "none", "required" or a function named', "tool_choice")


def _reasoning(raw):
    if raw is None:
        return None
    if raw not in REASONING:
        raise fields.bad(f'"reasoning_effort" must be one of {", ".join(REASONING)}', "reasoning_effort")
    return REASONING[raw]


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
    return common.error_answer(e, error_body)


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
        self._thinking = self._chunk({"reasoning_content": "\x00"}).split(b'"\\u0000"')  # the same
        self.calls = 0  # tool calls sent so far: the next one's index

    def frame(self, ev: Event, id: str | None = None) -> bytes:
        if isinstance(ev, Text):
            return self._head + json.dumps(ev.text, ensure_ascii=False).encode() + self._tail
        if isinstance(ev, Heartbeat):
            return sse.HEARTBEAT
        if isinstance(ev, Thinking):  # as llama.cpp's server and vLLM send it
            head, tail = self._thinking
            return head + json.dumps(ev.text, ensure_ascii=False).encode() + tail
        if isinstance(ev, ToolCall):
            self.calls += 1
            return self._chunk({"tool_calls": [_call(ev) | {"index": self.calls - 1}]})
        if isinstance(ev, Start):
            return self._chunk({"role": "assistant", "content": ""})
        if isinstance(ev, End):
            failure = common.end_error(ev)
            if failure is not None:
                status = common.dialect_status(failure.http_status, failure.code)
                return _data(error_body(status, failure.to_dict()))
            out = self._chunk({}, "tool_calls" if self.calls else FINISH[str(ev.status)])
            if self.include_usage:
                out += _data(self._object("chat.completion.chunk", [], usage(ev)))
            return out + b"data: [DONE]\n\n"
        return b""  # progress (queued, loading) has no place in this dialect

    def completion(self, answer: common.Answer) -> dict:
        """The non-streaming answer."""
        message = {"role": "assistant", "content": answer.text}
        if answer.thinking:
            message["reasoning_content"] = answer.thinking
        if answer.tool_calls:
            message["content"] = answer.text or None
            message["tool_calls"] = [_call(c) for c in answer.tool_calls]
        choice = {"index": 0, "message": message, "logprobs": None}
        choice["finish_reason"] = "tool_calls" if answer.tool_calls else FINISH[str(answer.end.status)]
        return self._object("chat.completion", [choice], usage(answer.end))

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


def _call(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _data(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
