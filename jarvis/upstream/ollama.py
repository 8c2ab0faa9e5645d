"""Ollama over HTTP: ``POST /api/chat`` streamed as NDJSON.

The call's skeleton is ``remote.py``'s, its connection, cancellation and errors
``http.py``'s; this module speaks Ollama's protocol: the request body, the
lines of the answer, and what an HTTP status means.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from ..errors import (
    ModelNotFound,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
)
from . import Done, Message, Options, http, probe
from .remote import Remote, count


class OllamaUpstream(Remote):
    """Streams chat answers from one Ollama server."""

    name = "ollama"
    url_field = "ollama_url"
    chat_path = "/api/chat"
    peer_name = "Ollama"
    hint = "Start it with `ollama serve`, or set JARVIS_OLLAMA_URL to where it runs."

    def _request(self, messages: Sequence[Message], model: str, options: Options | None) -> tuple[dict, dict]:
        body = {"model": model, "messages": list(messages), "stream": True}
        if options is not None and (sampling := options.named(max_tokens="num_predict")):
            body["options"] = sampling
        return body, {}

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


class _Lines:
    """Ollama's answer: one JSON object a line, the last one ``done``."""

    def read(self, lines: list[bytes]) -> Iterator[str | Done]:
        for line in lines:
            if not line or line.isspace():
                continue
            text, done = _parse_line(line)
            if text:
                yield text
            if done is not None:
                yield done
                return

    def end(self) -> Iterable[str | Done]:
        raise UpstreamDisconnected("Ollama ended the answer before it was done")


def _parse_line(line: bytes) -> tuple[str, Done | None]:
    """One NDJSON line of Ollama's answer: its text (often ""), and ``Done`` on the last."""
    try:
        obj = http.parse_json(line)
    except ValueError:
        raise UpstreamProtocolError("Ollama sent a line that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError("Ollama sent a line that is not a JSON object")
    if obj.get("error"):
        raise UpstreamStreamError(f"Ollama reported an error: {obj['error']}")
    message = obj.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        text = ""
    if not obj.get("done"):
        return text, None
    return text, Done(
        "length" if obj.get("done_reason") == "length" else "stop",
        count(obj.get("prompt_eval_count")),
        count(obj.get("eval_count")),
    )
