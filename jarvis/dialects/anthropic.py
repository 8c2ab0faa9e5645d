"""Anthropic's Messages dialect: routes only (parse, call the core, answer).

The official ``anthropic`` client, Claude Code and the tools built on them point
``base_url`` (``ANTHROPIC_BASE_URL``) at Jarvis and send a Jarvis token as
``x-api-key`` or ``Authorization: Bearer``. Blocks become the core's messages;
``anthropic_stream.py`` frames the answer back.
"""

from __future__ import annotations

from flask import Blueprint, current_app

from ..conversation import Chat, Message, Options
from ..errors import BadRequest
from ..upstream import count_tokens_of
from . import common, fields
from .anthropic_stream import MessageFramer, error_body

bp = Blueprint("anthropic", __name__, url_prefix="/v1")


def jarvis():
    return current_app.extensions["jarvis"]


@bp.post("/messages")
def messages():
    j = jarvis()
    call = parse(fields.read_json(j.config), j.config, j.upstream.default_model)
    framer = MessageFramer(call.model)
    return common.respond(call, framer, "anthropic", "text/event-stream", framer.message)


@bp.post("/messages/count_tokens")
def count_tokens():
    """Checked like a message, then counted where the backend can count without answering (the
    embedded model); refused where it cannot (Ollama, an OpenAI-compatible server)."""
    j = jarvis()
    body = fields.read_json(j.config)
    COUNT_FIELDS.check(body)
    call = parse({**body, "max_tokens": 1}, j.config, j.upstream.default_model)
    counted = count_tokens_of(j.upstream, call.chat)
    if counted is None:
        raise BadRequest(
            "counting tokens is not supported by this backend: Ollama has no route that counts a "
            "prompt's tokens, nor have OpenAI-compatible servers, so they count a prompt only while "
            "they answer it (the embedded model counts); usage.input_tokens of each message says "
            "what a prompt cost",
            code="unsupported",
        )
    return {"input_tokens": counted}


# every request field of POST /v1/messages, as Anthropic's reference lists them: honoured, or refused
FIELDS = fields.Fields(
    honoured={
        "model", "messages", "max_tokens", "system", "stream", "temperature", "top_p", "top_k",
        "stop_sequences", "tools", "tool_choice", "thinking", "metadata", "cache_control",
        "output_config",
    },
    refused={
        "container": "Jarvis runs no code containers",
        "mcp_servers": "Jarvis connects to no MCP server on a caller's behalf",
        "context_management": "Jarvis edits no context on a caller's behalf",
        "service_tier": "one tier",
        "speed": "one speed",
        "inference_geo": "the model runs where Jarvis's backend runs",
        "diagnostics": "Jarvis keeps no diagnostics for a caller",
        "output_format": 'send "output_config": {"format": ...}',
    },
    accepted={"service_tier": ("auto", "standard_only"), "speed": ("standard",)},
)  # fmt: skip
COUNT_FIELDS = fields.Fields(FIELDS.honoured - {"max_tokens", "stream", "metadata"}, FIELDS.refused)
MESSAGE_FIELDS = fields.Fields({"role", "content"}, {})
METADATA_FIELDS = fields.Fields({"user_id"}, {})
OUTPUT_FIELDS = fields.Fields({"format"}, {"effort": "the backends have no effort setting"})
TOOL_FIELDS = fields.Fields({"name", "description", "input_schema", "cache_control", "type", "strict"}, {
    "input_examples": "tool input examples are not passed to the model",
    "defer_loading": "tool search is not supported",
    "allowed_callers": "programmatic tool calls are not supported",
})  # fmt: skip
BLOCK_FIELDS = {
    "text": fields.Fields({"type", "text", "cache_control"}, {"citations": "citations are not supported"}),
    "image": fields.Fields({"type", "source", "cache_control"}, {}),
    "tool_use": fields.Fields({"type", "id", "name", "input", "cache_control"}, {}),
    "tool_result": fields.Fields({"type", "tool_use_id", "content", "is_error", "cache_control"}, {}),
    "thinking": fields.Fields({"type", "thinking", "signature"}, {}),
}
USER_BLOCKS, ASSISTANT_BLOCKS = {"text", "image", "tool_result"}, {"text", "tool_use", "thinking"}
SOURCE_FIELDS = fields.Fields({"type", "media_type", "data"}, {})
NAMES = {
    "images": "messages",
    "think": "thinking",
    "format": "output_config.format",
    "options.top_k": "top_k",
}


def parse(body: dict, config, default_model: str) -> common.Call:
    """A Messages request as a call to the core; 400 naming the field for anything Jarvis would not serve."""
    FIELDS.check(body)
    if body.get("max_tokens") is None:
        raise fields.bad('"max_tokens" is required', "max_tokens")
    metadata = _object(body, "metadata")
    METADATA_FIELDS.check(metadata, "metadata.")
    if not isinstance(metadata.get("user_id") or "", str):
        raise fields.bad('"metadata.user_id" must be a string', "metadata.user_id")
    _cache_control(body.get("cache_control"), "cache_control")
    tools = _tools(body.get("tools"))
    chat = Chat(
        model=fields.model_name(body.get("model"), default_model),
        messages=_system(body.get("system"), config) + _conversation(body.get("messages"), config),
        options=_options(body),
        tools=tools,
        **_tool_choice(body.get("tool_choice"), tools),
        **_output(_object(body, "output_config")),
        think=_thinking(body.get("thinking"), body["max_tokens"]),
    )
    return common.Call(
        chat, fields.flag(body, "stream", False), names=NAMES, end_user=metadata.get("user_id")
    )


def _object(body: dict, key: str) -> dict:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise fields.bad(f'"{key}" must be an object', key)
    return value


def _options(body: dict) -> Options:
    top_k = fields.number(body, "top_k", 0, 2**31, integer=True)
    return Options(
        temperature=fields.number(body, "temperature", 0, 1),
        top_p=fields.number(body, "top_p", 0, 1),
        max_tokens=fields.number(body, "max_tokens", 1, 2**31, integer=True),
        stop=fields.stops(body.get("stop_sequences"), "stop_sequences"),
        extra={"top_k": top_k} if top_k is not None else {},
    )


def _cache_control(value, param: str) -> None:
    """Honoured as a hint the backends follow anyway: each keeps the prompt prefix it last read."""
    if value is not None and (not isinstance(value, dict) or value.get("type") != "ephemeral"):
        raise fields.bad(f'"{param}" must be {{"type": "ephemeral"}}', param)


def _system(raw, config) -> list[Message]:
    if raw is None or raw == "" or raw == []:
        return []
    text = raw if isinstance(raw, str) else "\n".join(_texts(raw, "system"))
    return [{"role": "system", "content": fields.prompt_text(text, config, "system")}]


def _texts(raw, param: str) -> list[str]:
    """The texts of a list of text blocks (a system prompt, a tool's result)."""
    if not isinstance(raw, list):
        raise fields.bad(f'"{param}" must be a string or a list of text blocks', param)
    out = []
    for i, block in enumerate(raw):
        where = f"{param}[{i}]"
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            raise fields.unsupported(where, "only text blocks are supported here")
        BLOCK_FIELDS["text"].check(block, f"{where}.")
        _cache_control(block.get("cache_control"), f"{where}.cache_control")
        out.append(block["text"])
    return out


def _conversation(raw, config) -> list[Message]:
    """Anthropic's messages as the core's: a user message's tool results become tool messages."""
    if not isinstance(raw, list) or not raw:
        raise fields.bad('"messages" must be a non-empty list of messages', "messages")
    out: list[Message] = []
    images, calls = fields.ImageBudget(config), set()
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise fields.bad(f"{where} must be an object", where)
        MESSAGE_FIELDS.check(message, f"{where}.")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise fields.bad(
                f'{where}.role must be "user" or "assistant" (the system prompt is "system")', where
            )
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise fields.bad(f"{where}.content must be a string or a list of blocks", f"{where}.content")
        read = _user if role == "user" else _assistant
        for m in read(content, f"{where}.content", images, calls):
            fields.prompt_text(m["content"], config, f"{where}.content")
            out.append(m)
    fields.answered_names(out)
    return out


def _blocks(content: list, param: str, kinds: set[str]):
    """Each block of a message, checked: (where, type, block)."""
    for i, block in enumerate(content):
        where = f"{param}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in kinds:
            raise fields.unsupported(
                where, f"{kind!r} blocks are not supported here (only {', '.join(sorted(kinds))})"
            )
        BLOCK_FIELDS[kind].check(block, f"{where}.")
        _cache_control(block.get("cache_control"), f"{where}.cache_control")
        yield where, kind, block


def _user(content: list, param: str, images: fields.ImageBudget, calls: set[str]) -> list[Message]:
    """A user's blocks: its tool results first (each a tool message), then its text and images."""
    results: list[Message] = []
    texts, pictures = [], []
    for where, kind, block in _blocks(content, param, USER_BLOCKS):
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "image":
            pictures.append(_image(block.get("source"), f"{where}.source", images))
        else:
            results.append(_result(block, where, calls))
    if not texts and not pictures:
        return results
    user: Message = {"role": "user", "content": "\n".join(texts)}
    if pictures:
        user["images"] = pictures
    return [*results, user]


def _assistant(content: list, param: str, images, calls: set[str]) -> list[Message]:
    out: Message = {"role": "assistant", "content": ""}
    texts, thoughts, tool_calls = [], [], []
    for where, kind, block in _blocks(content, param, ASSISTANT_BLOCKS):
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "thinking":
            if not isinstance(block.get("thinking"), str):
                raise fields.bad(f"{where}.thinking must be a string", f"{where}.thinking")
            thoughts.append(block["thinking"])  # a signature is Anthropic's to check: Jarvis signs nothing
        else:
            if not isinstance(block.get("id"), str) or not block["id"]:
                raise fields.bad(f"{where}.id must name the call", f"{where}.id")
            if not isinstance(block.get("input"), dict):
                raise fields.bad(f"{where}.input must be an object", f"{where}.input")
            tool_calls.append(fields.tool_call(block.get("name"), block["input"], block["id"], where))
            calls.add(block["id"])
    out["content"] = "".join(texts)
    if thoughts:
        out["thinking"] = "".join(thoughts)
    if tool_calls:
        out["tool_calls"] = tool_calls
    return [out]


def _text(block: dict, where: str) -> str:
    if not isinstance(block.get("text"), str):
        raise fields.bad(f"{where}.text must be a string", f"{where}.text")
    return block["text"]


def _image(source, where: str, images: fields.ImageBudget):
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise fields.unsupported(
            where, "only base64 image sources: Jarvis fetches nothing on a caller's behalf"
        )
    SOURCE_FIELDS.check(source, f"{where}.")
    return images.image(source.get("data"), f"{where}.data", bare=True)


def _result(block: dict, where: str, calls: set[str]) -> Message:
    ident = block.get("tool_use_id")
    if ident not in calls:
        raise fields.bad(f"{where}.tool_use_id names no earlier tool_use block", f"{where}.tool_use_id")
    content = block.get("content")
    text = content if isinstance(content, str) else "\n".join(_texts(content or [], f"{where}.content"))
    if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
        raise fields.bad(f"{where}.is_error must be true or false", f"{where}.is_error")
    if block.get("is_error"):
        text = "Error: " + text  # the tool failed: the model reads it so
    return {"role": "tool", "content": text, "tool_call_id": ident}


def _tools(raw) -> tuple:
    """Anthropic's client tools (``input_schema``) in the shape the core's tool reader takes."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise fields.bad('"tools" must be a list of tools', "tools")
    shaped = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "custom") not in ("custom", None):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise fields.unsupported(
                where, f"only client tools with an input_schema are supported, not {kind!r}"
            )
        TOOL_FIELDS.check(tool, f"{where}.")
        _cache_control(tool.get("cache_control"), f"{where}.cache_control")
        function = {"name": tool.get("name"), "parameters": tool.get("input_schema")}
        for key in ("description", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        shaped.append({"type": "function", "function": function})
    return fields.tools(shaped)


def _tool_choice(raw, tools: tuple) -> dict:
    """``tool_choice`` as the core's ``tool_choice``, ``tool_name`` and ``parallel_tool_calls``."""
    if raw is None:
        return {}
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise fields.bad('"tool_choice.type" must be "auto", "any", "tool" or "none"', "tool_choice")
    fields.Fields({"type", "name", "disable_parallel_tool_use"}, {}).check(raw, "tool_choice.")
    out = {"tool_choice": {"auto": "auto", "any": "required", "tool": "required", "none": "none"}[kind]}
    if kind == "tool":
        if raw.get("name") not in {t.name for t in tools}:
            raise fields.bad('"tool_choice.name" must name one of "tools"', "tool_choice.name")
        out["tool_name"] = raw["name"]
    if fields.flag(raw, "disable_parallel_tool_use", False):
        out["parallel_tool_calls"] = False
    return out


def _output(raw: dict) -> dict:
    """``output_config.format``: a JSON schema the answer is held to."""
    OUTPUT_FIELDS.check(raw, "output_config.")
    found = raw.get("format")
    if found is None:
        return {}
    if (
        not isinstance(found, dict)
        or found.get("type") != "json_schema"
        or not isinstance(found.get("schema"), dict)
    ):
        raise fields.bad(
            '"output_config.format" must be {"type": "json_schema", "schema": {...}}', "output_config.format"
        )
    return {"format": found["schema"]}


def _thinking(raw, max_tokens) -> bool | None:
    """``thinking`` as the core's ``think``. The backends have no separate thinking budget: the
    thinking counts toward ``max_tokens``, as Anthropic counts it."""
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "disabled":
        return False
    if kind == "adaptive":
        return True
    if kind != "enabled":
        raise fields.bad('"thinking.type" must be "enabled", "adaptive" or "disabled"', "thinking")
    budget = raw.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1024 <= budget < max_tokens:
        raise fields.bad(
            '"thinking.budget_tokens" must be an integer from 1024 to below max_tokens', "thinking"
        )
    fields.Fields({"type", "budget_tokens"}, {"display": "thinking is shown as the model writes it"}).check(
        raw, "thinking."
    )
    return True


@bp.errorhandler(Exception)
def error(e: Exception):
    return common.error_answer(e, error_body)
