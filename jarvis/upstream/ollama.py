"""Ollama over HTTP: ``POST /api/chat`` streamed as NDJSON.

The connection, its cancellation and its errors are ``http.py``'s; this
module speaks Ollama's protocol: the request body, the lines of the answer,
and what an HTTP status means.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from ..cancel import CancelScope
from ..config import Config
from ..errors import (
    ModelNotFound,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
)
from . import WAITING, Done, Message, Options, Progress, http, probe

PROBE_READ_S = 2.0  # a health check or model list is small: it answers quickly or not at all


class OllamaUpstream:
    """Streams chat answers from one Ollama server."""

    name = "ollama"

    def __init__(self, config: Config):
        self.url = config.ollama_url.rstrip("/")
        self.default_model = config.model
        self.config = config
        self.peer = http.Peer(
            "Ollama", self.url, "Start it with `ollama serve`, or set JARVIS_OLLAMA_URL to where it runs."
        )

    def stream_chat(
        self,
        messages: Sequence[Message],
        model: str,
        cancel: CancelScope,
        session: str | None = None,
        options: Options | None = None,
        first_token_by: float | None = None,
    ) -> Iterator[str | Progress | Done]:
        """Yield ``WAITING``, the text as Ollama streams it, then ``Done``; stop quietly once cancelled."""
        if cancel.cancelled:  # checkpoint: superseded or stopped before the call
            return
        body = {"model": model, "messages": list(messages), "stream": True}
        if options is not None and (sampling := options.named(max_tokens="num_predict")):
            body["options"] = sampling
        # all the server tells before its first token (loading, reading the prompt) is silence
        yield WAITING
        with http.request(
            "POST",
            self.url + "/api/chat",
            cancel=cancel,
            timeouts=http.Timeouts.of(self.config, first_token_by),
            peer=self.peer,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        ) as response:
            if cancel.cancelled:
                return
            if response.status != 200:
                raise self._http_error(response, model)
            # a fast server sends many lines a receive: they come as one group
            for lines in response.line_groups(self.config.max_line_bytes):
                fresh = True
                for line in lines:
                    if not line or line.isspace():
                        continue
                    text, done = _parse_line(line)
                    if text:
                        if fresh:  # text restarts the idle clock; once per receive is enough
                            response.progress()
                            fresh = False
                        yield text
                    if done is not None:
                        yield done
                        return
            if not cancel.cancelled:
                raise UpstreamDisconnected("Ollama ended the answer before it was done")

    def _http_error(self, response: http.Response, model: str) -> UpstreamError:
        detail = response.error_detail()
        if response.status == 404:
            return ModelNotFound(
                f"Model {model!r} is not available in Ollama at {self.url}. "
                f"Pull it with `ollama pull {model}`."
            )
        return UpstreamHTTPError(f"Ollama answered HTTP {response.status}: {detail}")

    def _get(self, path: str) -> dict:
        cfg = self.config
        timeouts = http.Timeouts(cfg.connect_timeout_s, PROBE_READ_S, PROBE_READ_S, PROBE_READ_S + 1)
        found = http.get_json(self.url + path, timeouts=timeouts, peer=self.peer)
        if not isinstance(found, dict):
            raise UpstreamProtocolError(f"Ollama sent something that is not a JSON object for {path}")
        return found

    def health(self) -> dict:
        return probe(self, lambda: self._get("/api/version"))

    def models(self) -> list[dict]:
        return [{"name": m.get("name", "")} for m in self._get("/api/tags").get("models", [])]

    def close(self) -> None:
        """Nothing is shared between streams, so nothing to release."""


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
        _count(obj.get("prompt_eval_count")),
        _count(obj.get("eval_count")),
    )


def _count(value) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
