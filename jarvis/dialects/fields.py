"""What a request of either dialect may hold, read and checked once: the JSON body, the
conversation (text, images, tool calls, tool results), tools, formats and numbers, and the
fields a dialect honours or refuses (never one silently dropped).

Each rule is the native API's rule (body limits, prompt limit, model names); the dialect
modules only say which of their fields maps to which.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from flask import request

from ..config import Config
from ..conversation import Image, Message, Tool, ToolCall, call_id, decode_image
from ..errors import BadRequest
from ..upstream.forced import schema_problem
from ..web.bodies import json_object


def bad(message: str, param: str | None = None, code: str | None = None) -> BadRequest:
    """A 400 naming the offending field (OpenAI's ``param``)."""
    e = BadRequest(message, code=code)
    e.param = param
    return e


def read_json(config: Config) -> dict:
    """The request body as a JSON object, bounded like the native API's (whatever the content type)."""
    # the bound waitress applies under jarvis serve: a body it accepts, we accept
    limit = config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise bad("the request body is too large", code="prompt_too_large")
    request.max_content_length = limit  # bounds a chunked body too
    body = json_object(force=True)
    if body is None:
        raise bad("the body must be a JSON object")
    return body


class Fields:
    """A dialect's request fields: each one honoured or refused, never silently dropped.

    ``honoured`` fields are read by the dialect; a ``refused`` one answers 400 naming it and
    why, unless its value is one the dialect can honour (``accepted``: ``"n": 1``, say); any
    other field answers 400 as unknown."""

    def __init__(self, honoured: set[str], refused: dict[str, str], accepted: dict[str, tuple] | None = None):
        self.honoured, self.refused, self.accepted = honoured, refused, accepted or {}

    def check(self, body: dict, where: str = "") -> None:
        for key, value in body.items():
            param = f"{where}{key}"
            if key in self.honoured or value is None:
                continue
            if key in self.refused:
                if value in self.accepted.get(key, ()):
                    continue
                raise unsupported(param, self.refused[key])
            raise unsupported(param, "Jarvis does not know this field")


def unsupported(param: str, why: str) -> BadRequest:
    """A 400 naming a field Jarvis will not honour, and why."""
    return bad(f"{param!r} is not supported: {why}", param, "unsupported")


def tools(raw, param: str = "tools") -> tuple[Tool, ...]:
    """Function tools, in the shape OpenAI and Ollama share: {"type": "function", "function": {...}}."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise bad(f'"{param}" must be a list of at most {MAX_TOOLS} tools', param)
    out = []
    for i, tool in enumerate(raw):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise unsupported(f"{where}.type", "only function tools are supported")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise bad(f"{where}.function must be an object", f"{where}.function")
        FUNCTION_FIELDS.check(function, f"{where}.function.")
        name, description = function.get("name"), function.get("description") or ""
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise bad(f"{where}.function.name must be 1-64 letters, digits, _ or -", f"{where}.function.name")
        if not isinstance(description, str):
            raise bad(f"{where}.function.description must be a string", f"{where}.function.description")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise bad(f"{where}.function.parameters must be a JSON schema", f"{where}.function.parameters")
        strict = _strict(function, parameters, f"{where}.function")
        out.append(Tool(name, description, parameters, strict))
    if len({t.name for t in out}) < len(out):
        raise bad(f'"{param}" names a function twice', param)
    return tuple(out)


def _strict(function: dict, parameters: dict, where: str) -> bool:
    """``strict``: the calls are checked against ``parameters`` (``upstream/forced.py``), so a
    schema Jarvis cannot check is refused here, before the answer starts."""
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad(f"{where}.strict must be true or false", f"{where}.strict")
    problem = schema_problem(parameters) if strict else None
    if problem is not None:
        param = f"{where}.parameters"
        raise unsupported(param, f"a strict tool's calls are checked against its schema, but {problem}")
    return bool(strict)


def tool_call(name, arguments, ident, where: str) -> ToolCall:
    """An assistant's earlier call, sent back in the history."""
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.function.name must be a string", f"{where}.function.name")
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        raise bad(f"{where}.function.arguments must be JSON", f"{where}.function.arguments")
    return ToolCall(ident if isinstance(ident, str) and ident else call_id(), name, arguments)


def answered_names(messages: list[Message]) -> None:
    """Pair each tool result with the call it answers: by its id, by its tool's name, or else as
    the next call not yet answered (Ollama's wire carries no id). Each gets both the call's id
    (an OpenAI-compatible server wants it) and its name (Ollama wants that)."""
    names: dict[str, str] = {}
    waiting: list[ToolCall] = []  # the last assistant's calls not yet answered, in order
    for i, m in enumerate(messages):
        if m.get("tool_calls"):
            waiting = list(m["tool_calls"])
            names.update((c.id, c.name) for c in waiting)
        if m["role"] != "tool":
            continue
        ident = m.get("tool_call_id")
        if ident is not None and ident not in names:
            where = f"messages[{i}].tool_call_id"
            raise bad(f"{where} names no earlier tool call", where)
        call = _answered(waiting, ident, m.get("name"))
        if call is not None:
            waiting.remove(call)
            m.setdefault("tool_call_id", call.id)
            m.setdefault("name", call.name)
        elif ident is not None:
            m.setdefault("name", names[ident])


def _answered(waiting: list[ToolCall], ident: str | None, name: str | None) -> ToolCall | None:
    for call in waiting:
        if (ident is not None and call.id == ident) or (ident is None and name in (None, call.name)):
            return call
    return None


class ImageBudget:
    """Decodes a request's images, within the per-image and per-request limits."""

    def __init__(self, config: Config):
        self.config, self.left = config, config.max_images_bytes

    def image(self, value, where: str, *, bare: bool) -> Image:
        image = decode_image(value, self.config.max_image_bytes, where, bare=bare)
        self.left -= len(image.data)
        if self.left < 0:
            raise bad(
                f"the request's images are larger than {self.config.max_images_bytes} bytes together",
                where,
                "image_too_large",
            )
        return image


def json_schema(found: dict, where: str, allowed: Fields) -> dict:
    """A named JSON schema (OpenAI's ``json_schema``, the Responses ``text.format``) as the core's
    format, its name and strictness; its description goes into the schema, where the model reads it."""
    allowed.check(found, where)
    schema, description = found["schema"], found.get("description")
    if isinstance(description, str) and description and "description" not in schema:
        schema = {**schema, "description": description}
    name, strict = found.get("name"), found.get("strict")
    return {
        "format": schema,
        "schema_name": name if isinstance(name, str) else None,
        "strict": strict if isinstance(strict, bool) else None,
    }


SCHEMA_FIELDS = Fields({"name", "description", "schema", "strict"}, {})
FLAT_SCHEMA_FIELDS = Fields(SCHEMA_FIELDS.honoured | {"type"}, {})


def output_format(raw, param: str, *, nested: bool) -> dict:
    """A structured-output request as the core's format ("json" or a JSON schema), its name and
    strictness: chat completions' ``response_format`` holds the schema under ``json_schema``
    (``nested``), the Responses API's ``text.format`` beside its ``type``."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    if raw is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"format": "json"}
    found = (raw.get("json_schema") if nested else raw) if kind == "json_schema" else None
    if not isinstance(found, dict) or not isinstance(found.get("schema"), dict):
        named = '"json_schema": {"name": ..., "schema": {...}}' if nested else '"name": ..., "schema": {...}'
        kinds = '{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
        raise bad(f'"{param}" must be {kinds}{named}}}', param)
    if nested:
        return json_schema(found, f"{param}.json_schema.", SCHEMA_FIELDS)
    return json_schema(found, f"{param}.", FLAT_SCHEMA_FIELDS)


def format_of(raw, param: str):
    """Ollama's ``format``: "json", a JSON schema, or nothing."""
    if raw is None or raw == "":
        return None
    if raw == "json" or (isinstance(raw, dict) and raw):
        return raw
    raise bad(f'"{param}" must be "json" or a JSON schema object', param)


def think_of(raw, param: str):
    """Thinking asked for: true or false, or a level."""
    if raw is None or isinstance(raw, bool) or raw in THINK_LEVELS:
        return raw
    raise bad(f'"{param}" must be true, false or one of {", ".join(THINK_LEVELS)}', param)


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
MAX_TOOLS = 128
TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
THINK_LEVELS = ("low", "medium", "high")
FUNCTION_FIELDS = Fields({"name", "description", "parameters", "strict"}, {})


def conversation(raw, config: Config, read: Callable[[dict, str, ImageBudget], Message]) -> list[Message]:
    """Check a list of messages; ``read(message, where, images)`` turns one into the core's shape."""
    if not isinstance(raw, list):
        raise bad('"messages" must be a list of messages', "messages")
    if not raw:
        raise bad('"messages" is empty: send at least one message', "messages")
    out, images = [], ImageBudget(config)
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"{where} must be an object", where)
        role = ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise bad(f"{where}.role must be one of system, user, assistant, tool", f"{where}.role")
        m = read({**message, "role": role}, where, images)
        prompt_text(m["content"], config, f"{where}.content")
        out.append(m)
    answered_names(out)
    return out


def prompt_text(text: str, config: Config, param: str) -> str:
    """``text`` if it fits the prompt limit (JARVIS_MAX_PROMPT_CHARS, per message)."""
    if len(text) > config.max_prompt_chars:
        raise bad(f"{param} is longer than {config.max_prompt_chars} characters", param, "prompt_too_large")
    return text


def model_name(raw, default: str, param: str = "model") -> str:
    if raw is None or raw == "":
        return default
    if not isinstance(raw, str) or len(raw) > 200 or not raw.isprintable():
        raise bad('"model" must be a model name', param)
    return raw


def number(body: dict, key: str, low: float, high: float, *, integer: bool = False, param: str = ""):
    """``body[key]`` checked to lie in [low, high]; None when absent."""
    value = body.get(key)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise bad(f'"{key}" must be {kind} from {low:g} to {high:g}', param or key)
    return value


def stops(value, param: str) -> tuple[str, ...]:
    """A stop sequence or a list of them."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > 16 or not all(isinstance(s, str) and s for s in value):
        raise bad(f'"{param}" must be a string or a list of up to 16 non-empty strings', param)
    return tuple(value)


def flag(body: dict, key: str, default: bool | None) -> bool | None:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f'"{key}" must be true or false', key)
    return value
