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
from collections.abc import Iterator, Sequence

from .. import sse
from ..config import Config, ConfigError
from ..errors import (
    ModelNotFound,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamUnauthorized,
)
from . import Done, Message, Options, http, probe
from .remote import Remote, count

FINISH = {"length": "length"}  # everything else ("stop", "eos", a stop word) is a finished answer


class OpenAIUpstream(Remote):
    """Streams chat answers from one OpenAI-compatible server."""

    name = "openai"
    url_field = "openai_url"
    chat_path = "/chat/completions"
    peer_name = "the OpenAI-compatible server"
    hint = "Start it, or set JARVIS_OPENAI_URL to where it runs (it usually ends in /v1)."

    def __init__(self, config: Config):
        super().__init__(config)
        self._key = _read_key(config)

    def __repr__(self) -> str:
        return f"OpenAIUpstream({self.url!r})"  # never the key

    def _request(self, messages: Sequence[Message], model: str, options: Options | None) -> tuple[dict, dict]:
        body = {
            "model": model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            **(options.named() if options is not None else {}),
        }
        return body, {"Accept": "text/event-stream", **self._auth()}

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

    def read(self, lines: list[bytes]) -> Iterator[str | Done]:
        # a fast server sends many events a receive: the lines of each come as one group
        for frame in self.events.lines(lines):
            if not frame.data:  # a lone "data:" says nothing
                continue
            text = self.feed(_error_event(frame.data) if frame.event == "error" else frame.data)
            if text:
                yield text
            if self.ended:
                yield self.done()
                return

    def end(self) -> Iterator[str | Done]:
        for frame in self.events.flush():  # the last event of a body closed without its blank line
            if frame.data and (text := self.feed(frame.data)):
                yield text
        if self.finish is None and not self.ended:
            raise UpstreamDisconnected("the OpenAI-compatible server ended the answer before it was done")
        yield self.done()  # a server that sends no [DONE] after the last choice

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
        text = ""
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                text += content
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return text

    def done(self) -> Done:
        return Done(
            FINISH.get(self.finish or "stop", "stop"),
            count(self.usage.get("prompt_tokens")),
            count(self.usage.get("completion_tokens")),
        )


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
