"""OpenAI's chat-completions dialect: routes only (parse, call the core, answer).

The official ``openai`` client, an editor or an agent points ``base_url`` at
``/v1`` and sends its bearer token as ``api_key``.
"""

from __future__ import annotations

from flask import Blueprint, current_app

from . import api, compat
from .errors import JarvisError
from .upstream import Options

bp = Blueprint("openai", __name__, url_prefix="/v1")

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


def parse_chat(body: dict, config, default_model: str) -> compat.Call:
    """A chat-completions request as a call to the core; 400 for anything Jarvis would not serve."""
    model = compat.model_name(body.get("model"), default_model)
    messages = compat.conversation(body.get("messages"), config, _content)
    if body.get("n") not in (None, 1):
        raise compat.bad('only "n": 1 is supported', "n")
    stream = compat.flag(body, "stream", False)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise compat.bad('"stream_options" must be an object', "stream_options")
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    options = Options(
        temperature=compat.number(body, "temperature", 0, 2),
        top_p=compat.number(body, "top_p", 0, 1),
        max_tokens=compat.number(body, limit, 1, 2**31, integer=True),
        stop=compat.stops(body.get("stop"), "stop"),
        seed=compat.number(body, "seed", -(2**63), 2**63 - 1, integer=True),
    )
    return compat.Call(
        model=model,
        messages=messages,
        options=options,
        stream=stream,
        include_usage=compat.flag(stream_options, "include_usage", False),
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
                raise compat.bad(f"{param} may hold only text parts", param)
            texts.append(part["text"])
        return "\n".join(texts)
    raise compat.bad(f"{param} must be a string or a list of text parts", param)


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
    return compat.rewrite_error(native, e, error_body)
