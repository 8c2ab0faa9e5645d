"""OpenAI's Responses API (``POST /v1/responses``), stateless: routes and parsing.

Codex CLI and newer agents speak only this. A request is read into the one ``Chat`` and answered
through the native lifecycle; ``responses_out`` frames the answer. Jarvis keeps no responses of its
own: ``store: true`` and ``previous_response_id`` are refused unless ``X-Jarvis-Session`` names a
session, which then holds the conversation (see docs/api.md).
"""

from __future__ import annotations

from dataclasses import replace

from flask import Blueprint, Response, current_app, request

from ..conversation import Chat, Message, Options, Tool, ToolCall
from ..errors import NotFound
from ..web.answers import SSE_HEADERS
from ..web.auth import owner
from . import common, fields, openai
from .responses_out import ResponseFramer

bp = Blueprint("responses", __name__, url_prefix="/v1")
bp.register_error_handler(Exception, openai.error)  # errors in OpenAI's shape, as chat completions'

SESSIONLESS = "Jarvis keeps no responses: name a session with the X-Jarvis-Session header to keep one"
# every request field of responses.create, as OpenAI's reference lists them: honoured, or refused
FIELDS = fields.Fields(
    honoured={
        "model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens",
        "temperature", "top_p", "reasoning", "stream", "store", "previous_response_id",
        "parallel_tool_calls", "user", "safety_identifier",
    },
    refused={
        "background": "answers are streamed or waited for, never run in the background",
        "background_options": "answers are never run in the background",
        "conversation": "Jarvis keeps a conversation only in a session named by X-Jarvis-Session",
        "context_management": "the backend manages its own context",
        "include": "Jarvis has no extra output to include",
        "max_tool_calls": "Jarvis runs no tools for a Responses caller",
        "metadata": "Jarvis keeps no responses to tag",
        "moderation": "Jarvis moderates nothing",
        "prompt": "Jarvis keeps no prompt templates",
        "prompt_cache_key": "the backend caches prompts itself",
        "prompt_cache_retention": "the backend caches prompts itself",
        "prompt_cache_options": "the backend caches prompts itself",
        "service_tier": "one tier",
        "stream_options": "Jarvis adds no obfuscation padding",
        "top_logprobs": "the backends give no log probabilities through Jarvis",
        "truncation": "a conversation longer than the model's context is the backend's to cut",
        "access_programs": "not an OpenAI deployment",
        "image": "answers are text",
    },
    accepted={
        "include": ([],), "metadata": ({},), "service_tier": ("auto", "default"),
        "stream_options": ({"include_obfuscation": False},), "truncation": ("disabled",),
    },
)  # fmt: skip
TOOL_FIELDS = fields.Fields(
    {"type", "name", "description", "parameters", "strict"},
    {"defer_loading": "tools are all loaded"},
    {"defer_loading": (False,)},
)
MESSAGE_FIELDS = fields.Fields({"type", "role", "content", "id", "status"}, {"phase": "no phases"})
CALL_FIELDS = fields.Fields(
    {"type", "call_id", "name", "arguments", "id", "status"}, {"namespace": "no namespaces"}
)
OUTPUT_FIELDS = fields.Fields({"type", "call_id", "output", "id", "status"}, {})
REASONING_ITEM_FIELDS = fields.Fields({"type", "id", "summary", "content", "status"}, {})
REASONING_FIELDS = fields.Fields(
    {"effort", "summary"},
    {
        "generate_summary": 'the deprecated "generate_summary"; send "summary"',
        "context": "the thinking of earlier turns is not sent back to the model",
        "mode": "one mode",
    },
)
TEXT_FIELDS = fields.Fields({"format"}, {"verbosity": "the backends have no verbosity setting"})
NAMES = {"images": "input", "think": "reasoning.effort", "format": "text.format", "tools": "tools"}


@bp.post("/responses")
def create():
    j = current_app.extensions["jarvis"]
    body = fields.read_json(j.config)
    call, previous = parse(body, j.config, j.upstream.default_model)
    session_id = request.headers.get(common.SESSION_HEADER) or None
    if session_id is not None and previous is not None:
        call = _continued(j.store, session_id, previous, call)
    framer = ResponseFramer(call, body, session_id is not None)
    stream = common.start(call, framer, "responses")
    if session_id is not None:
        # the stored answer: what a later previous_response_id names
        framer.envelope.id = f"resp_{stream.message_id}"
    if call.stream:
        return Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS)
    return framer.response(common.collect(stream))


@bp.route("/responses/<path:rest>", methods=["GET", "DELETE", "POST"])
def kept(rest: str):
    raise NotFound(f"no response {rest[:40]!r}: {SESSIONLESS}", code="not_found")


def parse(body: dict, config, default_model: str) -> tuple[common.Call, str | None]:
    """A Responses request as a call to the core, and the previous response it continues."""
    FIELDS.check(body)
    session = bool(request.headers.get(common.SESSION_HEADER))
    previous = body.get("previous_response_id")
    for name in ("store", "previous_response_id"):
        if body.get(name) not in (None, False) and not session:
            raise fields.unsupported(name, SESSIONLESS)
    if previous is not None and not isinstance(previous, str):
        raise fields.bad('"previous_response_id" must be a string', "previous_response_id")
    for name in ("user", "safety_identifier", "instructions"):
        if not isinstance(body.get(name) or "", str):
            raise fields.bad(f'"{name}" must be a string', name)
    messages = _input(body.get("input"), config)
    if body.get("instructions"):
        instructions = fields.prompt_text(body["instructions"], config, "instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    if previous is None:  # else the calls answered may be the session's: paired once it is read
        fields.answered_names(messages)
    chat = Chat(
        model=fields.model_name(body.get("model"), default_model),
        messages=messages,
        options=Options(
            temperature=fields.number(body, "temperature", 0, 2),
            top_p=fields.number(body, "top_p", 0, 1),
            max_tokens=fields.number(body, "max_output_tokens", 1, 2**31, integer=True),
        ),
        tools=_tools(body.get("tools")),
        **_tool_choice(body.get("tool_choice")),
        **_format(body.get("text")),
        parallel_tool_calls=fields.flag(body, "parallel_tool_calls", True),
        think=_reasoning(body.get("reasoning")),
    )
    fields.flag(body, "store", False)
    stream = fields.flag(body, "stream", False)
    return common.Call(
        chat, stream, names=NAMES, end_user=body.get("user") or body.get("safety_identifier")
    ), previous


def _continued(store, session_id: str, previous: str, call: common.Call) -> common.Call:
    """``call`` after the session's stored conversation: ``previous`` must name its latest answer."""
    if previous != f"resp_{store.get_session(session_id, owner())['leaf_id']}":
        raise fields.bad(
            '"previous_response_id" must be the id of the latest response of the X-Jarvis-Session session',
            "previous_response_id",
        )
    chat = call.chat
    system = [m for m in chat.messages if m["role"] == "system"]
    new = [m for m in chat.messages if m["role"] != "system"]
    if len(new) != 1:  # the session stores one prompt per answer
        raise fields.bad(
            'with "previous_response_id", "input" holds one new item: a message or a function_call_output',
            "input",
        )
    messages = [*system, *store.context(session_id), *new]
    fields.answered_names(messages)
    return replace(call, chat=replace(chat, messages=messages))


def _input(raw, config) -> list[Message]:
    """``input``: a user's text, or a list of items (messages, function calls and their outputs)."""
    if isinstance(raw, str):
        return [{"role": "user", "content": fields.prompt_text(raw, config, "input")}]
    if not isinstance(raw, list) or not raw:
        raise fields.bad('"input" must be a string or a non-empty list of items', "input")
    out: list[Message] = []
    images = fields.ImageBudget(config)
    thinking, mark = "", 0  # a reasoning item's text, carried to the assistant's turn that follows it
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise fields.bad(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "reasoning":
            REASONING_ITEM_FIELDS.check(item, f"{where}.")
            thinking += "".join(_texts(item.get("summary"), f"{where}.summary", ("summary_text",)))
            mark = len(out)
        elif kind == "message":
            out.append(_message(item, where, images, config))
        elif kind == "function_call":
            _function_call(out, item, where)
        elif kind == "function_call_output":
            out.append(_function_output(item, where, config))
        else:
            raise fields.unsupported(f"{where}.type", f"{kind!r} items are not supported")
        if thinking and len(out) > mark and out[-1]["role"] == "assistant":
            out[-1]["thinking"], thinking = thinking, ""
    return out


def _message(item: dict, where: str, images: fields.ImageBudget, config) -> Message:
    MESSAGE_FIELDS.check(item, f"{where}.")
    role = fields.ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None or role == "tool":
        raise fields.bad(f"{where}.role must be one of user, system, developer, assistant", f"{where}.role")
    content = item.get("content")
    texts: list[str] = []
    pictures = []
    if isinstance(content, str):
        texts = [content]
    elif isinstance(content, list):
        for j, part in enumerate(content):
            texts_or_image = _part(part, f"{where}.content[{j}]", role, images)
            if isinstance(texts_or_image, str):
                texts.append(texts_or_image)
            else:
                pictures.append(texts_or_image)
    else:
        raise fields.bad(f"{where}.content must be a string or a list of parts", f"{where}.content")
    m: Message = {"role": role, "content": fields.prompt_text("\n".join(texts), config, f"{where}.content")}
    if pictures:
        m["images"] = pictures
    return m


PART_TEXTS = {"user": ("input_text",), "system": ("input_text",), "assistant": ("output_text", "input_text")}
PART_FIELDS = fields.Fields(
    {"type", "text", "image_url", "detail", "annotations", "logprobs"},
    {"file_id": "Jarvis keeps no files: send the image as a data URL"},
)


def _part(part, where: str, role: str, images: fields.ImageBudget):
    """A text of a message's content, or an image of a user's."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in PART_TEXTS[role] and isinstance(part.get("text"), str):
        PART_FIELDS.check(part, f"{where}.")
        return part["text"]
    if kind == "input_image" and role == "user":
        PART_FIELDS.check(part, f"{where}.")
        return images.image(part.get("image_url"), f"{where}.image_url", bare=False)
    if kind in ("input_file", "input_audio", "input_image", "refusal"):
        raise fields.unsupported(where, f"{kind!r} parts are not supported here")
    kinds = " or ".join(PART_TEXTS[role]) + (" or input_image" if role == "user" else "")
    raise fields.bad(f"{where} must be an {kinds} part", where)


def _texts(raw, where: str, kinds: tuple[str, ...]) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(p, dict) and p.get("type") in kinds for p in raw):
        raise fields.bad(f"{where} must be a list of {', '.join(kinds)} parts", where)
    return [str(p.get("text", "")) for p in raw]


def _function_call(out: list[Message], item: dict, where: str) -> None:
    """An earlier call of the model: it joins the assistant's turn before it, or starts one."""
    CALL_FIELDS.check(item, f"{where}.")
    if not isinstance(item.get("call_id"), str) or not item["call_id"]:
        raise fields.bad(f"{where}.call_id must name the call", f"{where}.call_id")
    call: ToolCall = fields.tool_call(item.get("name"), item.get("arguments"), item["call_id"], where)
    if out and out[-1]["role"] == "assistant":
        out[-1].setdefault("tool_calls", []).append(call)
    else:
        out.append({"role": "assistant", "content": "", "tool_calls": [call]})


def _function_output(item: dict, where: str, config) -> Message:
    OUTPUT_FIELDS.check(item, f"{where}.")
    if not isinstance(item.get("call_id"), str):
        raise fields.bad(f"{where}.call_id must name the call it answers", f"{where}.call_id")
    output = item.get("output")
    if isinstance(output, list):
        output = "\n".join(_texts(output, f"{where}.output", ("input_text", "output_text")))
    if not isinstance(output, str):
        raise fields.bad(f"{where}.output must be a string or a list of input_text parts", f"{where}.output")
    content = fields.prompt_text(output, config, f"{where}.output")
    return {"role": "tool", "content": content, "tool_call_id": item["call_id"]}


def _tools(raw) -> tuple[Tool, ...]:
    """Function tools in the Responses API's flat shape; any other kind refused naming it."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > fields.MAX_TOOLS:
        raise fields.bad(f'"tools" must be a list of at most {fields.MAX_TOOLS} tools', "tools")
    nested = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            why = (
                f"{kind!r} tools are not supported: Jarvis offers only function tools, which the caller runs"
            )
            raise fields.unsupported(f"{where}.type", why)
        TOOL_FIELDS.check(tool, f"{where}.")
        keys = ("name", "description", "parameters", "strict")
        function = {k: tool[k] for k in keys if tool.get(k) is not None}
        nested.append({"type": "function", "function": function})
    return fields.tools(nested)


def _tool_choice(raw) -> dict:
    if raw is None:
        return {}
    if raw in ("auto", "none", "required"):
        return {"tool_choice": raw}
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("name"), str):
        return {"tool_choice": "required", "tool_name": raw["name"]}
    raise fields.bad('"tool_choice" must be "auto", "none", "required" or a function named', "tool_choice")


def _format(text) -> dict:
    """``text.format`` as the core's format ("json" or a JSON schema), its name and strictness."""
    if text is None:
        return {}
    if not isinstance(text, dict):
        raise fields.bad('"text" must be an object', "text")
    TEXT_FIELDS.check(text, "text.")
    return fields.output_format(text.get("format"), "text.format", nested=False)


def _reasoning(raw):
    """``reasoning.effort`` as the core's think; the thinking comes back whole as the summary."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise fields.bad('"reasoning" must be an object', "reasoning")
    REASONING_FIELDS.check(raw, "reasoning.")
    if raw.get("summary") not in (None, "auto"):
        raise fields.unsupported(
            "reasoning.summary", 'the model\'s thinking is given whole as the summary: send "auto" or nothing'
        )
    effort = raw.get("effort")
    if effort is None:
        return None
    levels = {**openai.REASONING, "xhigh": "high", "max": "high"}
    if effort not in levels:
        raise fields.bad(f'"reasoning.effort" must be one of {", ".join(levels)}', "reasoning.effort")
    return levels[effort]
