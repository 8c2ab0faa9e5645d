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

from ..conversation import Chat, Message, Options, ToolCall
from ..events import End, Event, Heartbeat, Start, Text, Thinking
from . import common, fields

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
    return _answer(parse_chat(fields.read_json(j.config), j.config, j.upstream.default_model), generate=False)


@bp.post("/generate")
def generate():
    j = jarvis()
    return _answer(
        parse_generate(fields.read_json(j.config), j.config, j.upstream.default_model), generate=True
    )


def _answer(call: common.Call, generate: bool):
    framer = NDJSONFramer(call.model, generate)
    return common.respond(call, framer, "ollama", "application/x-ndjson", framer.final)


# every request field of /api/chat and /api/generate, as Ollama's API reference lists them
SHARED = {"model", "stream", "format", "options", "keep_alive", "think"}
CHAT_FIELDS = fields.Fields(SHARED | {"messages", "tools"}, {})
GENERATE_FIELDS = fields.Fields(
    SHARED | {"prompt", "system", "images", "suffix", "raw"},
    {
        "template": "the model's own template is used",
        "context": "send the conversation as /api/chat messages instead",
    },
)
MESSAGE_FIELDS = fields.Fields(
    {"role", "content", "images", "tool_calls", "thinking", "tool_name", "tool_call_id"}, {}
)
# Ollama's model options: those of the core's Options by their Ollama names, the rest passed on as they are
MAPPED_OPTIONS = {
    "temperature",
    "top_p",
    "num_predict",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
}
PASSED_OPTIONS = {
    "num_ctx", "num_keep", "num_batch", "num_gpu", "main_gpu", "num_thread", "numa", "use_mmap",
    "use_mlock", "low_vram", "vocab_only", "top_k", "min_p", "typical_p", "tfs_z", "repeat_last_n",
    "repeat_penalty", "penalize_newline", "mirostat", "mirostat_tau", "mirostat_eta",
}  # fmt: skip
OPTION_FIELDS = fields.Fields(MAPPED_OPTIONS | PASSED_OPTIONS, {})


def parse_chat(body: dict, config, default_model: str) -> common.Call:
    """An /api/chat request as a call to the core; 400 for anything Jarvis would not serve."""
    CHAT_FIELDS.check(body)
    return _call(body, fields.conversation(body.get("messages"), config, _message), default_model)


def parse_generate(body: dict, config, default_model: str) -> common.Call:
    """An /api/generate request: one user message, after ``system`` if given."""
    GENERATE_FIELDS.check(body)
    prompt, system = body.get("prompt"), body.get("system")
    if not isinstance(prompt, str) or not prompt.strip():
        raise fields.bad('"prompt" must be a non-empty string', "prompt")
    if system is not None and not isinstance(system, str):
        raise fields.bad('"system" must be a string', "system")
    suffix, raw = body.get("suffix") or None, fields.flag(body, "raw", False)
    if suffix is not None and not isinstance(suffix, str):
        raise fields.bad('"suffix" must be a string', "suffix")
    if (suffix or raw) and system:  # a raw prompt, or the text before a gap: no template, no system
        raise fields.bad('"system" cannot go with "raw" or "suffix": the prompt is sent as it is', "system")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt, "images": body.get("images")})
    raw_prompt = {"completion": True, "suffix": suffix} if suffix or raw else {}
    return _call(body, fields.conversation(messages, config, _message), default_model, **raw_prompt)


def _call(body: dict, messages: list[Message], default_model: str, **completion) -> common.Call:
    chat = Chat(
        **completion,
        model=fields.model_name(body.get("model"), default_model),
        messages=messages,
        options=_options(body),
        tools=fields.tools(body.get("tools")),
        format=fields.format_of(body.get("format"), "format"),
        think=fields.think_of(body.get("think"), "think"),
        keep_alive=_keep_alive(body.get("keep_alive")),
    )
    return common.Call(chat, fields.flag(body, "stream", True), names={"images": "messages"})


def _message(m: dict, where: str, images: fields.ImageBudget) -> Message:
    """One /api/chat message in the core's shape: Ollama's images are plain base64."""
    MESSAGE_FIELDS.check(m, f"{where}.")
    content = m.get("content")
    if content is None and not (m.get("tool_calls") or m.get("images")):
        raise fields.bad(f"{where} has no content", f"{where}.content")
    content = content if content is not None else ""
    if not isinstance(content, str):
        raise fields.bad(f"{where}.content must be a string", f"{where}.content")
    out: Message = {"role": m["role"], "content": content}
    if m.get("images"):
        if m["role"] != "user" or not isinstance(m["images"], list):
            raise fields.bad(f"{where}.images must be a list, on a user's message", f"{where}.images")
        out["images"] = [
            images.image(v, f"{where}.images[{i}]", bare=True) for i, v in enumerate(m["images"])
        ]
    if m.get("tool_calls"):
        out["tool_calls"] = _calls(m["tool_calls"], f"{where}.tool_calls")
    for key, into in (("thinking", "thinking"), ("tool_name", "name"), ("tool_call_id", "tool_call_id")):
        if m.get(key) is not None:
            if not isinstance(m[key], str):
                raise fields.bad(f"{where}.{key} must be a string", f"{where}.{key}")
            out[into] = m[key]  # type: ignore[literal-required]
    return out


def _calls(raw, param: str) -> list[ToolCall]:
    if not isinstance(raw, list):
        raise fields.bad(f"{param} must be a list", param)
    out = []
    for i, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise fields.bad(f"{param}[{i}].function must be an object", f"{param}[{i}].function")
        out.append(
            fields.tool_call(
                function.get("name"), function.get("arguments") or {}, call.get("id"), f"{param}[{i}]"
            )
        )
    return out


def _keep_alive(raw):
    if raw is None or (isinstance(raw, (int, float)) and not isinstance(raw, bool)):
        return raw
    if isinstance(raw, str) and 0 < len(raw) <= 32:
        return raw
    raise fields.bad('"keep_alive" must be a duration ("5m") or a number of seconds', "keep_alive")


def _options(body: dict) -> Options:
    """Ollama's ``options``: the core's own by their Ollama names; every other documented one passed on."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise fields.bad('"options" must be an object', "options")
    OPTION_FIELDS.check(options, "options.")
    extra = {}
    for key in PASSED_OPTIONS & options.keys():
        value = options[key]
        if not isinstance(value, (int, float, bool)):
            raise fields.bad(f'"options.{key}" must be a number or true or false', f"options.{key}")
        extra[key] = value
    num_predict = fields.number(options, "num_predict", -2, 2**31, integer=True, param="options.num_predict")
    return Options(
        temperature=fields.number(options, "temperature", 0, 100, param="options.temperature"),
        top_p=fields.number(options, "top_p", 0, 1, param="options.top_p"),
        max_tokens=num_predict if num_predict and num_predict > 0 else None,  # -1, -2: no limit
        stop=fields.stops(options.get("stop"), "options.stop"),
        seed=fields.number(options, "seed", -(2**63), 2**63 - 1, integer=True, param="options.seed"),
        frequency_penalty=fields.number(
            options, "frequency_penalty", -2, 2, param="options.frequency_penalty"
        ),
        presence_penalty=fields.number(options, "presence_penalty", -2, 2, param="options.presence_penalty"),
        extra=extra,
    )


def error_body(status: int, error: dict) -> dict:
    """Ollama's error shape: one string."""
    return {"error": error.get("message", "")}


@bp.errorhandler(Exception)
def error(e: Exception):
    return common.error_answer(e, error_body)


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
        if isinstance(ev, Thinking):
            return _line(self._part("", thinking=ev.text) | {"done": False})
        if isinstance(ev, ToolCall):
            return _line(self._part("", calls=[ev]) | {"done": False})
        if isinstance(ev, (Heartbeat, Start)):
            return self.HEARTBEAT  # at the start too: the response head goes out at once
        if isinstance(ev, End):
            failure = common.end_error(ev)
            if failure is not None:
                return _line({"error": failure.message})
            return _line(self.final(common.Answer("", "", [], ev)))
        return b""  # progress (queued, loading) has no line in this dialect

    def final(self, answer: common.Answer) -> dict:
        """The last object: the rest of the answer (all of it when not streaming), done, statistics."""
        end = answer.end
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
        part = self._part(answer.text, answer.thinking, answer.tool_calls)
        return part | done | {k: v for k, v in stats.items() if v is not None}

    def _part(self, text: str, thinking: str = "", calls: list[ToolCall] | None = None) -> dict:
        head = {"model": self.model, "created_at": _now()}
        if self.generate:
            return head | {"response": text} | ({"thinking": thinking} if thinking else {})
        message = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = [
                {"id": c.id, "function": {"name": c.name, "arguments": c.args()}} for c in calls
            ]
        return head | {"message": message}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
