"""Ollama's API dialect: routes only (parse, call the core, answer).

Ollama's own client (``ollama.Client(host=..., headers=...)``) and the
front-ends that speak Ollama point at Jarvis as if it were Ollama; answers
stream as NDJSON unless ``"stream": false``.
"""

from __future__ import annotations

from flask import Blueprint, current_app

from . import api, compat
from .errors import JarvisError
from .upstream import Options

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


def parse_chat(body: dict, config, default_model: str) -> compat.Call:
    """An /api/chat request as a call to the core; 400 for anything Jarvis would not serve."""
    return compat.Call(
        model=compat.model_name(body.get("model"), default_model),
        messages=compat.conversation(body.get("messages"), config, _content),
        options=_options(body),
        stream=compat.flag(body, "stream", True),
    )


def parse_generate(body: dict, config, default_model: str) -> compat.Call:
    """An /api/generate request: one user message, after ``system`` if given."""
    prompt, system = body.get("prompt"), body.get("system")
    if not isinstance(prompt, str) or not prompt.strip():
        raise compat.bad('"prompt" must be a non-empty string', "prompt")
    if system is not None and not isinstance(system, str):
        raise compat.bad('"system" must be a string', "system")
    if body.get("images"):
        raise compat.bad("images are not supported", "images")
    messages = [{"role": "system", "content": compat.prompt_text(system, config, "system")}] if system else []
    messages.append({"role": "user", "content": compat.prompt_text(prompt, config, "prompt")})
    return compat.Call(
        model=compat.model_name(body.get("model"), default_model),
        messages=messages,
        options=_options(body),
        stream=compat.flag(body, "stream", True),
    )


def _content(content, param: str) -> str:
    if not isinstance(content, str):
        raise compat.bad(f"{param} must be a string", param)
    return content


def _options(body: dict) -> Options:
    """Ollama's ``options`` (temperature, top_p, num_predict, stop, seed); others are ignored."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise compat.bad('"options" must be an object', "options")
    num_predict = compat.number(options, "num_predict", -2, 2**31, integer=True, param="options.num_predict")
    return Options(
        temperature=compat.number(options, "temperature", 0, 100, param="options.temperature"),
        top_p=compat.number(options, "top_p", 0, 1, param="options.top_p"),
        max_tokens=num_predict if num_predict and num_predict > 0 else None,  # -1, -2: no limit
        stop=compat.stops(options.get("stop"), "options.stop"),
        seed=compat.number(options, "seed", -(2**63), 2**63 - 1, integer=True, param="options.seed"),
    )


def error_body(status: int, error: dict) -> dict:
    """Ollama's error shape: one string."""
    return {"error": error.get("message", "")}


@bp.errorhandler(Exception)
def error(e: Exception):
    native = api.jarvis_error(e) if isinstance(e, JarvisError) else api.internal_error(e)
    return compat.rewrite_error(native, e, error_body)
