"""Ollama over HTTP: ``POST /api/chat`` streamed as NDJSON.

The call's skeleton is ``remote.py``'s, its connection, cancellation and errors
``http.py``'s; this module speaks Ollama's protocol: the request body, the
lines of the answer, and what an HTTP status means.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator

from ..cancel import CancelScope
from ..conversation import Chat, Message, Thinking, ToolCall, call_id
from ..errors import (
    ModelNotFound,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
)
from . import Done, Embedded, Item, forced, http, probe, refuse_missing, vectors, vectors_of
from .remote import Remote, count

SHOW_FRESH_S = 60.0  # a model's capabilities change only when it is pulled again


class OllamaUpstream(Remote):
    """Streams chat answers from one Ollama server."""

    name = "ollama"
    url_field = "ollama_url"
    chat_path = "/api/chat"
    completion_path = "/api/generate"
    peer_name = "Ollama"
    hint = "Start it with `ollama serve`, or set JARVIS_OLLAMA_URL to where it runs."

    def __init__(self, config):
        super().__init__(config)
        self._shown: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._shown_lock = threading.Lock()  # guards _shown; never held across the call

    def stream_chat(
        self, chat: Chat, cancel: CancelScope, session: str | None = None, first_token_by: float | None = None
    ) -> Iterator[Item]:
        """As ``Remote``'s; a call Ollama cannot force (``tool_choice``) is asked for as a format."""
        if cancel.cancelled:  # checkpoint: superseded or stopped before the call
            return
        yield from forced.answer(chat, self._stream(forced.prepare(chat), cancel, first_token_by))

    def _request(self, chat: Chat) -> tuple[dict, dict]:
        body: dict = {"model": chat.model, "messages": [wire(m) for m in chat.messages], "stream": True}
        if chat.completion:  # the prompt continued as it is, or the gap before a suffix filled in
            prompt = chat.messages[-1]
            body = {"model": chat.model, "prompt": prompt["content"], "stream": True}
            body.update({"suffix": chat.suffix} if chat.suffix else {"raw": True})
            if prompt.get("images"):
                body["images"] = [image.b64() for image in prompt["images"]]
        if options := {**chat.options.extra, **chat.options.named(max_tokens="num_predict")}:
            body["options"] = options
        if chat.tools and chat.tool_choice != "none":
            body["tools"] = [t.to_dict() for t in chat.tools]
        for key in ("format", "think", "keep_alive"):
            if (value := getattr(chat, key)) is not None:
                body[key] = value
        return body, {}

    def check(self, chat: Chat) -> None:
        """Ollama honours every field; the model may lack what a field needs (``/api/show`` says)."""
        has = self.capabilities(chat.model)
        if has is not None:
            refuse_missing(chat, has, "Ollama")

    def capabilities(self, model: str) -> frozenset[str] | None:
        """What ``model`` can do ("completion", "tools", "vision", "thinking"...), as ``/api/show``
        lists it; None when Ollama does not say (an older Ollama, or none answers)."""
        now = time.monotonic()
        with self._shown_lock:
            found = self._shown.get(model)
        if found is not None and now - found[0] < SHOW_FRESH_S:
            return found[1]
        try:
            shown = self._get("/api/show", "Ollama sent no JSON object for /api/show", post={"model": model})
        except UpstreamError:
            return None  # the answer itself reports a missing model or a server down
        listed = shown.get("capabilities")
        has = frozenset(c for c in listed if isinstance(c, str)) if isinstance(listed, list) else None
        with self._shown_lock:
            self._shown[model] = (now, has)
        return has

    def embed(self, model: str, inputs: list[str], *, cancel: CancelScope | None = None, **knobs) -> Embedded:
        """``POST /api/embed``: every knob (truncate, dimensions, options, keep_alive) is Ollama's own."""
        body = {"model": model, "input": list(inputs), **{k: v for k, v in knobs.items() if v is not None}}
        parse = lambda data: vectors.answer(data, "embeddings")  # noqa: E731
        found = self._post_json("/api/embed", body, {}, cancel, lambda r: self._http_error(r, model), parse)
        return Embedded(
            vectors_of(found.get("embeddings"), len(inputs), "Ollama"), count(found.get("prompt_eval_count"))
        )

    def show(self, model: str) -> dict:
        """Ollama's own ``/api/show``, as it answers it."""
        on_error = lambda r: self._http_error(r, model)  # noqa: E731
        return self._get(
            "/api/show", "Ollama sent no JSON object for /api/show", post={"model": model}, on_error=on_error
        )

    def running(self) -> list[dict]:
        listed = self._object("/api/ps").get("models")
        return [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []

    def _reader(self) -> _Lines:
        return _Lines()

    def _http_error(self, response: http.Response, model: str) -> UpstreamError:
        detail = response.error_detail()
        if response.status == 404:
            return ModelNotFound(
                f"Model {model!r} is not available in Ollama at {self.url}. "
                f"Pull it with `ollama pull {model}`."
            )
        return UpstreamHTTPError(f"Ollama answered HTTP {response.status}: {detail}")

    def _object(self, path: str) -> dict:
        return self._get(path, f"Ollama sent something that is not a JSON object for {path}")

    def health(self) -> dict:
        return probe(self, lambda: self._object("/api/version"))

    def models(self) -> list[dict]:
        return [{"name": m.get("name", "")} for m in self._object("/api/tags").get("models", [])]


def wire(m: Message) -> dict:
    """One message as Ollama's ``/api/chat`` takes it."""
    out = {"role": m["role"], "content": m.get("content", "")}
    if m.get("images"):
        out["images"] = [image.b64() for image in m["images"]]
    if m.get("tool_calls"):
        out["tool_calls"] = [{"function": {"name": c.name, "arguments": c.args()}} for c in m["tool_calls"]]
    if m.get("thinking"):
        out["thinking"] = m["thinking"]
    if m.get("name"):
        out["tool_name"] = m["name"]
    return out


class _Lines:
    """Ollama's answer: one JSON object a line, the last one ``done``."""

    def read(self, lines: list[bytes]) -> Iterator[Item]:
        for line in lines:
            if not line or line.isspace():
                continue
            yield from _parse_line(line)

    def end(self) -> Iterable[Item]:
        raise UpstreamDisconnected("Ollama ended the answer before it was done")

    def gathered(self) -> bool:
        return False  # Ollama sends every item whole


def _parse_line(line: bytes) -> Iterator[Item]:
    """One NDJSON line of Ollama's answer: its thinking, text and tool calls, and ``Done`` on the last."""
    try:
        obj = http.parse_json(line)
    except ValueError:
        raise UpstreamProtocolError("Ollama sent a line that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError("Ollama sent a line that is not a JSON object")
    if obj.get("error"):
        raise UpstreamStreamError(f"Ollama reported an error: {obj['error']}")
    message = obj.get("message")
    if isinstance(message, dict):
        yield from _said(message, "content")
        if message.get("tool_calls"):
            yield from _calls(message["tool_calls"])
    elif "response" in obj:  # /api/generate's lines
        yield from _said(obj, "response")
    if obj.get("done"):
        yield Done(
            "length" if obj.get("done_reason") == "length" else "stop",
            count(obj.get("prompt_eval_count")),
            count(obj.get("eval_count")),
        )


def _said(part: dict, key: str) -> Iterator[Item]:
    """A line's thinking, then its text (under ``key``: "content" in a message, else "response")."""
    if (thinking := part.get("thinking")) and isinstance(thinking, str):
        yield Thinking(thinking)
    if (text := part.get(key)) and isinstance(text, str):
        yield text


def _calls(calls) -> Iterator[ToolCall]:
    """Ollama's ``tool_calls``: whole calls, arguments as an object; an id made when it gives none."""
    if not isinstance(calls, list):
        raise UpstreamProtocolError("Ollama sent tool_calls that are not a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UpstreamProtocolError("Ollama sent a tool call without a function name")
        arguments = function.get("arguments")
        text = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
        ident = call.get("id")
        yield ToolCall(ident if isinstance(ident, str) and ident else call_id(), function["name"], text)
