"""OpenAI's legacy completions, ``POST /v1/completions``: routes only (parse, call the core, answer).

Code-completion plugins send a raw ``prompt`` (and a ``suffix`` for fill-in-the-middle). The core
carries it as a ``Chat`` with ``completion`` set, the prompt as its one user message: Ollama gets it
at ``/api/generate``, an OpenAI-compatible server at ``/completions``. It runs through the native
lifecycle like a chat completion (registry, worker, cancel, cleanup once).
"""

from __future__ import annotations

import json
import secrets
import time

from flask import Blueprint, current_app

from .. import sse
from ..conversation import Chat, Options
from ..events import End, Event, Heartbeat, Start, Text
from . import common, fields, openai

bp = Blueprint("completions", __name__, url_prefix="/v1")

FIELDS = fields.Fields(
    honoured={
        "model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "stop", "stream",
        "stream_options", "seed", "frequency_penalty", "presence_penalty", "user",
    },
    refused={
        "echo": "the prompt is not echoed back",
        "n": "one choice per answer",
        "best_of": "one choice per answer",
        "logprobs": "the backends give no log probabilities through Jarvis",
        "logit_bias": "Ollama has no logit bias",
    },
    accepted={"echo": (False,), "n": (1,), "best_of": (1,)},
)  # fmt: skip


@bp.post("/completions")
def completions():
    j = current_app.extensions["jarvis"]
    call = parse(fields.read_json(j.config), j.config, j.upstream.default_model)
    framer = TextFramer(call.model, call.include_usage)
    return common.respond(call, framer, "openai", "text/event-stream", framer.completion)


def parse(body: dict, config, default_model: str) -> common.Call:
    """A legacy completions request as a raw-prompt call to the core."""
    FIELDS.check(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # one prompt in a list, as some clients send it
    if not isinstance(prompt, str) or not prompt:
        raise fields.bad(
            '"prompt" must be one non-empty string (token arrays and batches are not supported)', "prompt"
        )
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise fields.bad('"suffix" must be a string', "suffix")
    fields.prompt_text(suffix or "", config, "suffix")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise fields.bad('"stream_options" must be an object', "stream_options")
    if not isinstance(body.get("user") or "", str):
        raise fields.bad('"user" must be a string', "user")
    chat = Chat(
        model=fields.model_name(body.get("model"), default_model),
        messages=[{"role": "user", "content": fields.prompt_text(prompt, config, "prompt")}],
        options=Options(
            temperature=fields.number(body, "temperature", 0, 2),
            top_p=fields.number(body, "top_p", 0, 1),
            max_tokens=fields.number(body, "max_tokens", 1, 2**31, integer=True),
            stop=fields.stops(body.get("stop"), "stop"),
            seed=fields.number(body, "seed", -(2**63), 2**63 - 1, integer=True),
            frequency_penalty=fields.number(body, "frequency_penalty", -2, 2),
            presence_penalty=fields.number(body, "presence_penalty", -2, 2),
        ),
        completion=True,
        suffix=suffix or None,
    )
    return common.Call(
        chat,
        fields.flag(body, "stream", False),
        fields.flag(stream_options, "include_usage", False),
        names={"messages": "prompt"},
        end_user=body.get("user"),
    )


class TextFramer:
    """The legacy stream: ``text_completion`` events, a finish_reason, ``data: [DONE]``; a failure
    after the stream began is an ``{"error": ...}`` event and no ``[DONE]``, as for chat."""

    def __init__(self, model: str, include_usage: bool = False):
        self.model = model
        self.include_usage = include_usage
        self.id = "cmpl-" + secrets.token_hex(12)
        self.created = int(time.time())

    def frame(self, ev: Event, id: str | None = None) -> bytes:
        if isinstance(ev, Text):
            return _data(self._object([_choice(ev.text)]))
        if isinstance(ev, (Heartbeat, Start)):
            return sse.HEARTBEAT  # at the start too: the response head goes out at once
        if isinstance(ev, End):
            failure = common.end_error(ev)
            if failure is not None:
                status = common.dialect_status(failure.http_status, failure.code)
                return _data(openai.error_body(status, failure.to_dict()))
            out = _data(self._object([_choice("", openai.FINISH[str(ev.status)])]))
            if self.include_usage:
                out += _data(self._object([], openai.usage(ev)))
            return out + b"data: [DONE]\n\n"
        return b""  # thinking and progress have no place in this dialect

    def completion(self, answer: common.Answer) -> dict:
        """The non-streaming answer."""
        return self._object(
            [_choice(answer.text, openai.FINISH[str(answer.end.status)])], openai.usage(answer.end)
        )

    def _object(self, choices: list, usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}
        out["choices"] = choices
        if usage is not None:
            out["usage"] = usage
        return out


def _choice(text: str, finish: str | None = None) -> dict:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def _data(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


bp.register_error_handler(Exception, openai.error)
