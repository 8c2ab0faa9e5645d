"""An OpenAI-compatible server over HTTP: ``POST /chat/completions`` streamed as SSE.

llama.cpp's server, vLLM, LM Studio, LocalAI and hosted APIs all speak it.
The connection, its cancellation and its errors are ``http.py``'s, as for
Ollama; this module speaks the protocol: the request body, the events of the
answer, and what an HTTP status means. The API key goes out only in the
``Authorization`` header and is cut out of any error text a server echoes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from ..cancel import CancelScope
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
from . import WAITING, Done, Message, Options, Progress, http, probe

PROBE_READ_S = 2.0  # the model list is small: it answers quickly or not at all
FINISH = {"length": "length"}  # everything else ("stop", "eos", a stop word) is a finished answer


class OpenAIUpstream:
    """Streams chat answers from one OpenAI-compatible server."""

    name = "openai"

    def __init__(self, config: Config):
        self.url = config.openai_url.rstrip("/")
        self.default_model = config.model
        self.config = config
        self._key = _read_key(config)
        self.peer = http.Peer(
            "the OpenAI-compatible server",
            self.url,
            "Start it, or set JARVIS_OPENAI_URL to where it runs (it usually ends in /v1).",
        )

    def __repr__(self) -> str:
        return f"OpenAIUpstream({self.url!r})"  # never the key

    def stream_chat(
        self,
        messages: Sequence[Message],
        model: str,
        cancel: CancelScope,
        session: str | None = None,
        options: Options | None = None,
        first_token_by: float | None = None,
    ) -> Iterator[str | Progress | Done]:
        """Yield ``WAITING``, the text as the server streams it, ``Done``; stop quietly once cancelled."""
        if cancel.cancelled:  # checkpoint: superseded or stopped before the call
            return
        body = {
            "model": model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            **(options.named() if options is not None else {}),
        }
        # all the server tells before its first token (loading, reading the prompt) is silence
        yield WAITING
        with http.request(
            "POST",
            self.url + "/chat/completions",
            cancel=cancel,
            timeouts=http.Timeouts.of(self.config, first_token_by),
            peer=self.peer,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream", **self._auth()},
        ) as response:
            if cancel.cancelled:
                return
            if response.status != 200:
                raise self._http_error(response, model)
            answer, events = _Answer(self._redact), _Events()
            # a fast server sends many events a receive: the lines of each come as one group
            for lines in response.line_groups(self.config.max_line_bytes):
                fresh = True
                for data in events.feed(lines):
                    text = answer.feed(data)
                    if text:
                        if fresh:  # text restarts the idle clock; once per receive is enough
                            response.progress()
                            fresh = False
                        yield text
                    if answer.ended:
                        yield answer.done()
                        return
            if cancel.cancelled:
                return
            for data in events.end():
                if text := answer.feed(data):
                    yield text
            if answer.finish is None and not answer.ended:
                raise UpstreamDisconnected("the OpenAI-compatible server ended the answer before it was done")
            yield answer.done()  # a server that sends no [DONE] after the last choice

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

    def _get(self, path: str) -> dict:
        cfg = self.config
        timeouts = http.Timeouts(cfg.connect_timeout_s, PROBE_READ_S, PROBE_READ_S, PROBE_READ_S + 1)
        found = http.get_json(
            self.url + path,
            timeouts=timeouts,
            peer=self.peer,
            headers=self._auth(),
            on_error=lambda response: self._http_error(response, None, path),
        )
        if not isinstance(found, dict):
            raise UpstreamProtocolError(f"the OpenAI-compatible server sent no JSON object for {path}")
        return found

    def health(self) -> dict:
        return probe(self, lambda: self._get("/models"))

    def models(self) -> list[dict]:
        listed = self._get("/models").get("data")
        return [{"name": m["id"]} for m in listed or [] if isinstance(m, dict) and m.get("id")]

    def close(self) -> None:
        """Nothing is shared between streams, so nothing to release."""


class _Answer:
    """What the events of one answer said so far: why it finished, what it cost."""

    def __init__(self, redact):
        self.redact = redact
        self.finish: str | None = None
        self.usage: dict = {}
        self.ended = False  # [DONE] came

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
            _count(self.usage.get("prompt_tokens")),
            _count(self.usage.get("completion_tokens")),
        )


class _Events:
    """Server-sent events, fed a group of lines at a time: the data of each event completed."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.name = b""

    def feed(self, lines: list[bytes]) -> list[bytes]:
        """The data of the events these lines complete; an ``event: error`` as an error object."""
        done, data = [], self.data
        for line in lines:
            if not line:
                if data:
                    joined = data[0] if len(data) == 1 else b"\n".join(data)
                    if joined:  # a lone "data:" makes no event
                        done.append(_error_event(joined) if self.name == b"error" else joined)
                    data = self.data = []
                self.name = b""
            elif line.startswith(b"data:"):
                data.append(line[5:])  # JSON ignores the space after the colon
            elif line.startswith(b"event:"):
                self.name = line[6:].strip()
            # comments (": ping") and other fields keep a connection alive; they carry no text
        return done

    def end(self) -> list[bytes]:
        """The last event of a body closed without its blank line."""
        joined = b"\n".join(self.data)
        return [joined] if joined else []


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


def _count(value) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
