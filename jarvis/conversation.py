"""The one conversation every dialect translates to and every backend from.

A ``Chat`` is what a client asked for, whatever door it came in by: the
messages (text, images, an assistant's tool calls, a tool's result, thinking),
the tools the model may call, the output format, whether the model should
think, and the sampling ``Options``. A dialect builds one; a backend reads
one; nothing in between translates it again. An answer comes back as text,
``Thinking`` and ``ToolCall`` items (``events.py`` carries them to the client).

Messages are plain dicts of the ``Message`` shape, so that the history the
store keeps and the prompt the embedded model renders stay the dicts they are.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
from dataclasses import dataclass, field
from typing import Literal, TypedDict

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class Image:
    """An image on a user's message: its bytes, as a data URL or a base64 string carried them."""

    mime: str  # "image/png", "image/jpeg", ...
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        """Its content hash: how the store names it (one copy however often it is sent)."""
        return hashlib.sha256(self.data).hexdigest()

    def b64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.b64()}"


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for: ``arguments`` is the JSON text of an object, as the model wrote it."""

    id: str
    name: str
    arguments: str = "{}"

    def args(self) -> dict:
        """The arguments as an object (Ollama's wire form); {} when the model wrote no valid object."""
        try:
            found = json.loads(self.arguments or "{}")
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class ToolResult:
    """What a tool Jarvis ran gave back: text (untrusted, never HTML), whether it failed, how long
    it took, and the call it answers (``id``)."""

    content: str
    is_error: bool = False
    duration_ms: float = 0.0
    id: str = ""

    def to_dict(self) -> dict:
        out = {"content": self.content, "is_error": self.is_error, "duration_ms": round(self.duration_ms, 1)}
        return {"id": self.id, **out} if self.id else out


@dataclass(frozen=True)
class Thinking:
    """Thinking text the model streams before (or beside) its answer."""

    text: str


class Message(TypedDict, total=False):
    """One message of a conversation; only ``role`` and ``content`` are always there."""

    role: Role
    content: str
    images: list[Image]  # on a user message
    tool_calls: list[ToolCall]  # on an assistant message
    tool_call_id: str  # on a tool message: the call it answers
    name: str  # on a tool message: the tool's name (Ollama's tool_name)
    thinking: str  # on an assistant message: what it thought before it answered


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, and its arguments' JSON schema;
    ``strict``: a call's arguments must match that schema (OpenAI's and Anthropic's ``strict``)."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False

    def to_dict(self) -> dict:
        """OpenAI's and Ollama's shared form of a function tool."""
        function = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class Options:
    """Sampling settings passed on to the backend; None leaves the backend's default.

    ``extra`` holds Ollama's own ``options`` beyond these, by their Ollama names
    (``num_ctx``, ``top_k``, ``repeat_penalty``...): Ollama gets them unchanged;
    a backend that cannot honour one refuses the request.
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    extra: dict = field(default_factory=dict)

    def named(self, max_tokens: str = "max_tokens") -> dict:
        """The settings that are set, as request fields (servers name the answer limit differently)."""
        fields = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            max_tokens: self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop) or None,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }
        return {k: v for k, v in fields.items() if v is not None}


ToolChoice = Literal["auto", "none", "required"]
Format = Literal["json"] | dict | None  # "json": any JSON object; a dict: a JSON schema


@dataclass(frozen=True)
class Chat:
    """One request for an answer, as every backend reads it."""

    model: str
    messages: list[Message]
    options: Options = field(default_factory=Options)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "auto"
    tool_name: str | None = None  # the one function the model must call, when the client named it
    format: Format = None
    schema_name: str | None = None  # the name a client gave its schema (OpenAI's json_schema.name)
    strict: bool | None = None  # the client asked that the schema be held to exactly
    parallel_tool_calls: bool = True  # False: at most one tool call in the answer
    think: bool | str | None = None  # Ollama's think: True, False, or a level ("low", "medium", "high")
    keep_alive: str | int | float | None = None  # how long Ollama keeps the model loaded after
    # a raw prompt (the one user message) to continue, not a chat: backends call their completion
    # endpoint (Ollama's /api/generate, a server's /completions); ``suffix`` is the text after the gap
    completion: bool = False
    suffix: str | None = None

    @property
    def images(self) -> int:
        return sum(len(m.get("images") or ()) for m in self.messages)

    def wants(self) -> dict[str, str]:
        """What this request needs beyond plain text, by the field that asks for it: a backend
        that lacks one refuses the request naming that field."""
        needs = {}
        if self.tools and self.tool_choice != "none":
            needs["tools"] = "tools"
        if self.images:
            needs["images"] = "vision"
        if self.think:
            needs["think"] = "thinking"
        if self.suffix:
            needs["suffix"] = "insert"  # Ollama's name for a model that fills in the middle
        return needs


IMAGE_TYPES = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


def decode_image(value: object, max_bytes: int, where: str, *, bare: bool = True) -> Image:
    """An image from a base64 data URL (OpenAI's ``image_url``, the page) or, when ``bare``, plain
    base64 (Ollama's ``images``). Any other URL is refused: Jarvis fetches nothing on a caller's
    behalf. The type is read from the bytes (PNG, JPEG, GIF, WebP), never taken on trust."""
    if not isinstance(value, str) or not value:
        raise _bad(f"{where} must be a base64 image" + (" or a data URL" if bare else " data URL"), where)
    payload = value
    if value.startswith("data:"):
        head, comma, payload = value.partition(",")
        if not comma or not head.lower().endswith(";base64"):
            raise _bad(f"{where} must be a base64 data URL (data:image/png;base64,...)", where)
    elif not bare or "://" in value[:16]:
        raise _bad(f"{where} must be a data URL: Jarvis fetches nothing on a caller's behalf", where)
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise _bad(f"{where} is larger than {max_bytes} bytes", where, "image_too_large")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except ValueError:
        raise _bad(f"{where} is not valid base64", where) from None
    if len(data) > max_bytes:
        raise _bad(f"{where} is larger than {max_bytes} bytes", where, "image_too_large")
    mime = next((m for magic, m in IMAGE_TYPES.items() if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise _bad(f"{where} is not a PNG, JPEG, GIF or WebP image", where)
    return Image(mime, data)


def _bad(message: str, param: str, code: str | None = None):
    from .errors import BadRequest

    e = BadRequest(message, code=code)
    e.param = param  # the dialects name the field in their error shape
    return e


_CALL_PREFIX = "call_" + secrets.token_hex(6)
_call_numbers = itertools.count(1)


def call_id() -> str:
    """An id for a tool call whose backend gave none (Ollama's and the embedded model's): unique in
    this process and unlikely anywhere else; a name, not a secret, so no system call per call."""
    return f"{_CALL_PREFIX}{next(_call_numbers):06x}"


def forced_tools(chat: Chat) -> tuple[Tool, ...]:
    """The tools a call must be made from (``tool_choice`` "required", or a function named);
    () when the model may answer in text."""
    if not chat.tools or chat.tool_choice == "none":
        return ()
    if chat.tool_name is not None:
        return tuple(t for t in chat.tools if t.name == chat.tool_name)
    return chat.tools if chat.tool_choice == "required" else ()


def call_schema(tools: tuple[Tool, ...]) -> dict:
    """A JSON schema whose every instance is a call of one of ``tools``: a backend that can hold
    the answer to a schema (a grammar) can so be made to call a tool. With several tools, each
    function's arguments are held to its own parameters once its name is written."""
    if len(tools) == 1:
        return tools[0].parameters
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
            }
            for t in tools
        ]
    }


def forced_call(tools: tuple[Tool, ...], text: str) -> ToolCall:
    """The call an answer held to ``call_schema(tools)`` makes."""
    if len(tools) == 1:
        return ToolCall(call_id(), tools[0].name, text.strip() or "{}")
    try:
        found = json.loads(text)
        name, arguments = found["name"], found["arguments"]
    except (ValueError, KeyError, TypeError):
        from .errors import UpstreamStreamError

        raise UpstreamStreamError("the model's tool call is not the JSON it was held to") from None
    return ToolCall(call_id(), str(name), json.dumps(arguments))
