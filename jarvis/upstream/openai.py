"""An OpenAI-compatible server over HTTP: ``POST /chat/completions`` streamed as SSE.

llama.cpp's server, vLLM, LM Studio, LocalAI and hosted APIs all speak it.
The call's skeleton is ``remote.py``'s, its connection, cancellation and
errors ``http.py``'s, as for Ollama; this module speaks the protocol: the
request body, the events of the answer, and what an HTTP status means. The API
key goes out only in the ``Authorization`` header and is cut out of any error
text a server echoes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from .. import sse
from ..config import Config, ConfigError
from ..conversation import Chat, Message, Thinking, ToolCall, call_id
from ..errors import (
    ModelNotFound,
    Unsupported,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamUnauthorized,
)
from . import Done, Embedded, Item, http, probe, refuse_missing, vectors, vectors_of
from .remote import Remote, count

FINISH = {"length": "length"}  # everything else ("stop", "eos", a stop word) is a finished answer
# Ollama options that llama.cpp's server and vLLM take under the same name; any other is refused
PASSED_OPTIONS = ("top_k", "min_p")
CAPABILITIES = ("tools", "vision", "thinking", "insert")  # insert: fill-in-the-middle (a suffix)


class OpenAIUpstream(Remote):
    """Streams chat answers from one OpenAI-compatible server."""

    name = "openai"
    url_field = "openai_url"
    chat_path = "/chat/completions"
    completion_path = "/completions"
    peer_name = "the OpenAI-compatible server"
    hint = "Start it, or set JARVIS_OPENAI_URL to where it runs (it usually ends in /v1)."

    def __init__(self, config: Config):
        super().__init__(config)
        self._key = _read_key(config)

    def __repr__(self) -> str:
        return f"OpenAIUpstream({self.url!r})"  # never the key

    def _request(self, chat: Chat) -> tuple[dict, dict]:
        body = {
            "model": chat.model,
            "messages": [wire(m) for m in chat.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            **chat.options.named(),
            **{k: chat.options.extra[k] for k in PASSED_OPTIONS if k in chat.options.extra},
        }
        if chat.tools:
            body["tools"] = [t.to_dict() for t in chat.tools]
            named = {"type": "function", "function": {"name": chat.tool_name}}
            body["tool_choice"] = named if chat.tool_name else chat.tool_choice
            if not chat.parallel_tool_calls:
                body["parallel_tool_calls"] = False
        if chat.format == "json":
            body["response_format"] = {"type": "json_object"}
        elif chat.format is not None:
            schema = {"name": chat.schema_name or "answer", "schema": chat.format}
            if chat.strict is not None:
                schema["strict"] = chat.strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        if chat.think:
            body["reasoning_effort"] = chat.think if isinstance(chat.think, str) else "medium"
        if chat.completion:  # the legacy completions: the prompt continued, the suffix after it
            del body["messages"]
            body["prompt"] = chat.messages[-1]["content"]
            if chat.suffix:
                body["suffix"] = chat.suffix
        return body, {"Accept": "text/event-stream", **self._auth()}

    def check(self, chat: Chat) -> None:
        """Refuse what an OpenAI-compatible server cannot be asked: Ollama's own options and
        ``keep_alive``, and what JARVIS_OPENAI_CAPABILITIES does not list."""
        for key in chat.options.extra:
            if key not in PASSED_OPTIONS:
                raise Unsupported(
                    f"options.{key}",
                    f"the OpenAI-compatible server takes no {key!r} option "
                    f"(of Ollama's options it takes {', '.join(PASSED_OPTIONS)})",
                )
        if chat.keep_alive is not None:
            raise Unsupported("keep_alive", "keep_alive applies to Ollama; the model server keeps its own")
        refuse_missing(
            chat, self.capabilities(chat.model), "the OpenAI-compatible server (JARVIS_OPENAI_CAPABILITIES)"
        )

    def capabilities(self, model: str) -> frozenset[str]:
        """As JARVIS_OPENAI_CAPABILITIES says: such a server does not tell."""
        listed = {c.strip() for c in self.config.openai_capabilities.split(",")}
        return frozenset({"completion"} | (listed & set(CAPABILITIES)))

    def embed(self, model: str, inputs: list[str], *, cancel=None, dimensions=None, **knobs) -> Embedded:
        """``POST /embeddings`` as floats; Ollama's knobs (truncate, options, keep_alive) are refused."""
        for name, value in knobs.items():
            if value is not None:
                raise Unsupported(name, f"the OpenAI-compatible server takes no {name!r} for embeddings")
        body = {"model": model, "input": list(inputs), "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        on_error = lambda r: self._http_error(r, model, "/embeddings")  # noqa: E731
        parse = lambda data: vectors.answer(data, "data", "embedding")  # noqa: E731
        found = self._post_json("/embeddings", body, self._auth(), cancel, on_error, parse)
        data = found.get("data")
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise UpstreamProtocolError("the OpenAI-compatible server sent embeddings without a data list")
        data = sorted(data, key=lambda d: d.get("index") if isinstance(d.get("index"), int) else 0)
        found_vectors = [d.get("embedding") for d in data]
        checked = vectors_of(found_vectors, len(inputs), "the OpenAI-compatible server")
        usage = found.get("usage") if isinstance(found.get("usage"), dict) else {}
        return Embedded(checked, count(usage.get("prompt_tokens")))

    def show(self, model: str) -> dict:
        """What Jarvis knows of ``model``: it is listed, and JARVIS_OPENAI_CAPABILITIES; such a server
        tells no context length."""
        if model not in {m["name"] for m in self.models()}:
            raise ModelNotFound(f"Model {model!r} is not served by {self.url}")
        return {"capabilities": sorted(self.capabilities(model)), "details": {}, "model_info": {}}

    def running(self) -> list[dict]:
        return []  # an OpenAI-compatible server does not say what it has loaded

    def _reader(self) -> _Answer:
        return _Answer(self._redact)

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[key]") if self._key else text

    def _http_error(
        self, response: http.Response, model: str | None, path: str = "/chat/completions"
    ) -> UpstreamError:
        detail = self._redact(response.error_detail()).rstrip(".")
        status = response.status
        if status in (401, 403):
            return UpstreamUnauthorized(
                f"the OpenAI-compatible server at {self.url} refused the API key (HTTP {status}): {detail}. "
                "Check JARVIS_OPENAI_API_KEY or JARVIS_OPENAI_API_KEY_FILE."
            )
        if status == 404 and model is not None and (model in detail or "model" in detail.lower()):
            return ModelNotFound(f"Model {model!r} is not served by {self.url}: {detail}")
        if status == 404:
            return UpstreamHTTPError(
                f"{self.url}{path} answered HTTP 404: {detail}. "
                "Check JARVIS_OPENAI_URL (it usually ends in /v1)."
            )
        return UpstreamHTTPError(f"the OpenAI-compatible server answered HTTP {status} to {path}: {detail}")

    def _models(self) -> dict:
        return self._get(
            "/models",
            "the OpenAI-compatible server sent no JSON object for /models",
            headers=self._auth(),
            on_error=lambda response: self._http_error(response, None, "/models"),
        )

    def health(self) -> dict:
        return probe(self, self._models)

    def models(self) -> list[dict]:
        listed = self._models().get("data")
        return [{"name": m["id"]} for m in listed or [] if isinstance(m, dict) and m.get("id")]


class _Answer:
    """What the events of one answer said so far: its text, why it finished, what it cost."""

    def __init__(self, redact):
        self.redact = redact
        self.events = sse.Parser()
        self.finish: str | None = None
        self.usage: dict = {}
        self.ended = False  # [DONE] came
        self.calls: dict[int, list] = {}  # index -> [id, name, argument pieces]: whole once it finishes
        self._pieces = False  # a piece of a tool call came since gathered() was last asked
        self.thinking: list[str] = []

    def read(self, lines: list[bytes]) -> Iterator[Item]:
        # a fast server sends many events a receive: the lines of each come as one group
        for frame in self.events.lines(lines):
            if not frame.data:  # a lone "data:" says nothing
                continue
            data = _error_event(frame.data) if frame.event == "error" else frame.data
            yield from self.said(self.feed(data))
            if self.ended:
                yield from self.done()
                return

    def end(self) -> Iterator[Item]:
        for frame in self.events.flush():  # the last event of a body closed without its blank line
            if frame.data:
                yield from self.said(self.feed(frame.data))
        if self.finish is None and not self.ended:
            raise UpstreamDisconnected("the OpenAI-compatible server ended the answer before it was done")
        yield from self.done()  # a server that sends no [DONE] after the last choice

    def gathered(self) -> bool:
        pieces, self._pieces = self._pieces, False
        return pieces

    def said(self, text: str) -> Iterator[Item]:
        """What one event said: its thinking first, then its text."""
        if self.thinking:
            yield Thinking("".join(self.thinking))
            self.thinking.clear()
        if text:
            yield text

    def feed(self, data: bytes) -> str:
        """The text of one event's data (often ""), noting its finish reason and usage."""
        try:
            obj = http.parse_json(data)
        except ValueError:
            if data.strip() == b"[DONE]":  # not JSON: tested only when the parse fails, once an answer
                self.ended = True
                return ""
            raise UpstreamProtocolError(
                "the OpenAI-compatible server sent an event that is not JSON"
            ) from None
        if not isinstance(obj, dict):
            raise UpstreamProtocolError(
                "the OpenAI-compatible server sent an event that is not a JSON object"
            )
        if obj.get("error"):
            error = obj["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamStreamError(f"the model server reported an error: {self.redact(str(message))}")
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        return self.choices(obj.get("choices") or ())

    def choices(self, choices) -> str:
        """The text of an event's choices, noting their finish reason and their pieces."""
        text = ""
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                text += self.note(delta)
            elif isinstance(choice.get("text"), str):  # a legacy completion's chunk
                text += choice["text"]
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return text

    def note(self, delta: dict) -> str:
        """One delta's text; its reasoning and tool-call pieces are kept until they are whole."""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")  # llama.cpp, vLLM
        if isinstance(reasoning, str) and reasoning:
            self.thinking.append(reasoning)
        for piece in delta.get("tool_calls") or ():
            if not isinstance(piece, dict) or not isinstance(piece.get("index", 0), int):
                raise UpstreamProtocolError("the OpenAI-compatible server sent a tool call without an index")
            call = self.calls.setdefault(piece.get("index", 0), [None, None, []])
            function = piece.get("function") if isinstance(piece.get("function"), dict) else {}
            call[0] = call[0] or piece.get("id")
            call[1] = call[1] or function.get("name")
            if isinstance(function.get("arguments"), str):
                call[2].append(function["arguments"])
            self._pieces = True
        content = delta.get("content")
        return content if isinstance(content, str) else ""

    def done(self) -> Iterator[Item]:
        """The tool calls, whole, then ``Done``."""
        for index in sorted(self.calls):
            ident, name, pieces = self.calls[index]
            if not isinstance(name, str) or not name:
                raise UpstreamProtocolError("the OpenAI-compatible server sent a tool call without a name")
            ident = ident if isinstance(ident, str) and ident else call_id()
            yield ToolCall(ident, name, "".join(pieces) or "{}")
        self.calls.clear()
        yield Done(
            FINISH.get(self.finish or "stop", "stop"),
            count(self.usage.get("prompt_tokens")),
            count(self.usage.get("completion_tokens")),
        )


def wire(m: Message) -> dict:
    """One message as ``/chat/completions`` takes it."""
    out: dict = {"role": m["role"], "content": m.get("content", "")}
    if m.get("images"):
        parts = [{"type": "text", "text": out["content"]}] if out["content"] else []
        out["content"] = parts + [
            {"type": "image_url", "image_url": {"url": image.data_url()}} for image in m["images"]
        ]
    if m.get("tool_calls"):
        out["content"] = out["content"] or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m["tool_calls"]
        ]
    if m["role"] == "tool":
        out["tool_call_id"] = m.get("tool_call_id", "")
    return out


def _error_event(data: bytes) -> bytes:
    return json.dumps({"error": _error_of(data)}).encode()


def _error_of(data: bytes):
    try:
        found = json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace").strip() or "an error event"
    return found.get("error", found) if isinstance(found, dict) else data


def _read_key(config: Config) -> str:
    if not config.openai_api_key_file:
        return config.openai_api_key.strip()
    try:
        with open(config.openai_api_key_file, encoding="utf-8") as f:
            return f.readline().strip()
    except OSError as e:
        raise ConfigError(f"JARVIS_OPENAI_API_KEY_FILE cannot be read: {e.strerror}") from None
