"""Ollama's API dialect: routes only (parse, call the core, answer).

Ollama's own client (``ollama.Client(host=..., headers=...)``) and the
front-ends that speak Ollama point at Jarvis as if it were Ollama; answers
stream as NDJSON unless ``"stream": false``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from flask import Blueprint, current_app

from ..errors import JarvisError
from ..events import End, Event, Heartbeat, Start, Text
from ..upstream import Options
from ..web import api
from . import common

bp = Blueprint("ollama", __name__, url_prefix="/api")

# the Ollama API level these routes follow; clients compare it before using newer fields
API_VERSION = "0.6.0"


def jarvis():
    return current_app.extensions["jarvis"]


@bp.get("/tags")
def tags():
    listed = jarvis().upstream.models()
    return {
        "models": [
            {"name": m["name"], "model": m["name"], "size": 0, "digest": "", "details": {}} for m in listed
        ]
    }


@bp.get("/version")
def version():
    return {"version": API_VERSION}


@bp.post("/chat")
def chat():
    j = jarvis()
    return _answer(parse_chat(common.read_json(j.config), j.config, j.upstream.default_model), generate=False)


@bp.post("/generate")
def generate():
    j = jarvis()
    return _answer(
        parse_generate(common.read_json(j.config), j.config, j.upstream.default_model), generate=True
    )


def _answer(call: common.Call, generate: bool):
    framer = NDJSONFramer(call.model, generate)
    return common.respond(call, framer, "ollama", "application/x-ndjson", framer.final)


def parse_chat(body: dict, config, default_model: str) -> common.Call:
    """An /api/chat request as a call to the core; 400 for anything Jarvis would not serve."""
    raw = body.get("messages")
    if isinstance(raw, list) and any(isinstance(m, dict) and m.get("images") for m in raw):
        raise common.bad("images are not supported", "messages")
    return common.Call(
        model=common.model_name(body.get("model"), default_model),
        messages=common.conversation(raw, config, _content),
        options=_options(body),
        stream=common.flag(body, "stream", True),
    )


def parse_generate(body: dict, config, default_model: str) -> common.Call:
    """An /api/generate request: one user message, after ``system`` if given."""
    prompt, system = body.get("prompt"), body.get("system")
    if not isinstance(prompt, str) or not prompt.strip():
        raise common.bad('"prompt" must be a non-empty string', "prompt")
    if system is not None and not isinstance(system, str):
        raise common.bad('"system" must be a string', "system")
    if body.get("images"):
        raise common.bad("images are not supported", "images")
    messages = [{"role": "system", "content": common.prompt_text(system, config, "system")}] if system else []
    messages.append({"role": "user", "content": common.prompt_text(prompt, config, "prompt")})
    return common.Call(
        model=common.model_name(body.get("model"), default_model),
        messages=messages,
        options=_options(body),
        stream=common.flag(body, "stream", True),
    )


def _content(content, param: str) -> str:
    if not isinstance(content, str):
        raise common.bad(f"{param} must be a string", param)
    return content


def _options(body: dict) -> Options:
    """Ollama's ``options`` (temperature, top_p, num_predict, stop, seed); others are ignored."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise common.bad('"options" must be an object', "options")
    num_predict = common.number(options, "num_predict", -2, 2**31, integer=True, param="options.num_predict")
    return Options(
        temperature=common.number(options, "temperature", 0, 100, param="options.temperature"),
        top_p=common.number(options, "top_p", 0, 1, param="options.top_p"),
        max_tokens=num_predict if num_predict and num_predict > 0 else None,  # -1, -2: no limit
        stop=common.stops(options.get("stop"), "options.stop"),
        seed=common.number(options, "seed", -(2**63), 2**63 - 1, integer=True, param="options.seed"),
    )


def error_body(status: int, error: dict) -> dict:
    """Ollama's error shape: one string."""
    return {"error": error.get("message", "")}


@bp.errorhandler(Exception)
def error(e: Exception):
    native = api.jarvis_error(e) if isinstance(e, JarvisError) else api.internal_error(e)
    return common.rewrite_error(native, e, error_body)


class NDJSONFramer:
    """Ollama's stream: one JSON object a line, the last with ``done`` and its statistics.

    A failure or a cut answer ends with an ``{"error": ...}`` line, which Ollama's client raises.
    The heartbeat is one space: JSON allows it before the next object, and the write is how a
    plain WSGI host notices a gone client.
    """

    HEARTBEAT = b" "

    def __init__(self, model: str, generate: bool = False):
        self.model = model
        self.generate = generate  # /api/generate answers in "response", /api/chat in "message"
        self.started = time.monotonic()
        self.first_text: float | None = None

    def frame(self, ev: Event, id: str | None = None) -> bytes:
        if isinstance(ev, Text):
            if self.first_text is None:
                self.first_text = time.monotonic()
            return _line(self._part(ev.text) | {"done": False})
        if isinstance(ev, (Heartbeat, Start)):
            return self.HEARTBEAT  # at the start too: the response head goes out at once
        if isinstance(ev, End):
            failure = common.end_error(ev)
            if failure is not None:
                return _line({"error": failure.message})
            return _line(self.final("", ev))
        return b""  # progress (queued, loading) has no line in this dialect

    def final(self, text: str, end: End) -> dict:
        """The last object: the rest of the text (all of it when not streaming), done, statistics."""
        now = time.monotonic()
        first = self.first_text or now
        counts = end.meta.get("usage") or {}
        stats = {
            "total_duration": _ns(now - self.started),
            "load_duration": 0,
            "prompt_eval_count": counts.get("prompt_tokens"),
            "prompt_eval_duration": _ns(first - self.started),
            "eval_count": counts.get("completion_tokens"),
            "eval_duration": _ns(now - first),
        }
        done = {"done": True, "done_reason": "length" if str(end.status) == "length" else "stop"}
        return self._part(text) | done | {k: v for k, v in stats.items() if v is not None}

    def _part(self, text: str) -> dict:
        head = {"model": self.model, "created_at": _now()}
        if self.generate:
            return head | {"response": text}
        return head | {"message": {"role": "assistant", "content": text}}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
