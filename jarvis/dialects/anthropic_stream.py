"""Anthropic's answer shapes: the ``message`` object, and the event stream the official client reads
(``message_start``, ``content_block_start``/``_delta``/``_stop``, ``message_delta``,
``message_stop``, ``ping``; ``error`` for an answer that did not finish).
"""

from __future__ import annotations

import json
import secrets

from ..conversation import ToolCall
from ..events import End, Event, Heartbeat, Progress, Start, Text, Thinking
from ..status import Status
from ..upstream.stops import STOP_SEQUENCE
from . import common

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class MessageFramer:
    """Frames one answer's events as Anthropic's stream: each run of text or thinking is one
    content block, each tool call a ``tool_use`` block whose input comes as one ``input_json_delta``.

    A failure after the stream began is an ``error`` event and no ``message_stop``: the official
    client raises it instead of taking the cut answer as finished.
    """

    def __init__(self, model: str):
        self.model = model
        self.id = "msg_" + secrets.token_hex(12)
        self.index = -1  # the open block's index, or the last one's
        self.open: str | None = None  # "text" or "thinking" while such a block is open
        self.calls = 0
        self._delta = b""  # the head of the open block's delta events, up to the text

    def frame(self, ev: Event, id: str | None = None) -> bytes:
        if isinstance(ev, Text):
            return self._run("text", "text_delta", ev.text)
        if isinstance(ev, Thinking):
            return self._run("thinking", "thinking_delta", ev.text)
        if isinstance(ev, ToolCall):
            return self._tool_use(ev)
        if isinstance(ev, (Heartbeat, Progress)):
            return _event("ping", {"type": "ping"})  # the wait (queued, loading) is a keep-alive here
        if isinstance(ev, Start):
            message = self._message([], None, {"input_tokens": 0, "output_tokens": 0})
            return _event("message_start", {"type": "message_start", "message": message})
        if isinstance(ev, End):
            return self._end(ev)
        return b""

    def message(self, answer: common.Answer) -> dict:
        """The non-streaming answer."""
        content: list[dict] = []
        if answer.thinking:
            content.append({"type": "thinking", "thinking": answer.thinking, "signature": ""})
        if answer.text or not answer.tool_calls:
            content.append({"type": "text", "text": answer.text})
        content += [_tool_use(c) for c in answer.tool_calls]
        self.calls = len(answer.tool_calls)
        message = self._message(content, self._stop_reason(answer.end), usage(answer.end))
        return message | {"stop_sequence": _sequence(answer.end)}

    def _run(self, kind: str, delta: str, text: str) -> bytes:
        out = b""
        if self.open != kind:
            out = self._close() + self._start(
                {"type": kind, kind: ""} | ({"signature": ""} if kind == "thinking" else {})
            )
            self.open = kind
            head = {"type": "content_block_delta", "index": self.index, "delta": {"type": delta, kind: ""}}
            self._delta = _event("content_block_delta", head).split(b'""}}')[0]
        return out + self._delta + json.dumps(text, ensure_ascii=False).encode() + b"}}\n\n"

    def _tool_use(self, call: ToolCall) -> bytes:
        self.calls += 1
        out = self._close() + self._start(_tool_use(call) | {"input": {}})
        partial = json.dumps(call.args(), ensure_ascii=False)
        delta = {"type": "input_json_delta", "partial_json": partial}
        out += _event(
            "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}
        )
        return out + self._stop()

    def _start(self, block: dict) -> bytes:
        self.index += 1
        return _event(
            "content_block_start",
            {"type": "content_block_start", "index": self.index, "content_block": block},
        )

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return self._stop()

    def _stop(self) -> bytes:
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _end(self, ev: End) -> bytes:
        failure = common.end_error(ev)
        if failure is not None:
            status = common.dialect_status(failure.http_status, failure.code)
            return _event("error", error_body(status, failure.to_dict()))
        out = self._close()
        delta = {"stop_reason": self._stop_reason(ev), "stop_sequence": _sequence(ev)}
        out += _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage(ev)})
        return out + _event("message_stop", {"type": "message_stop"})

    def _stop_reason(self, end: End) -> str:
        """Why the answer ended. Jarvis matches stop sequences itself (``upstream/stops.py``), so it
        knows one ended the answer: the backends, which strip it, are never sent one."""
        if self.calls:
            return "tool_use"
        if _sequence(end) is not None:
            return "stop_sequence"
        return "max_tokens" if end.status == Status.LENGTH else "end_turn"

    def _message(self, content: list, stop_reason: str | None, counts: dict) -> dict:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": counts,
        }


def error_body(status: int, error: dict) -> dict:
    """Anthropic's error shape."""
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    message, param = error.get("message", ""), error.get("param")
    if param and not (message.startswith(param) or any(f"{q}{param}{q}" in message for q in "'\"")):
        message = f"{param}: {message}"  # the shape has no param: the message names the field
    return {"type": "error", "error": {"type": kind, "message": message}}


def usage(end: End) -> dict:
    counts = end.meta.get("usage") or {}
    return {
        "input_tokens": counts.get("prompt_tokens", 0),
        "output_tokens": counts.get("completion_tokens", 0),
    }


def _sequence(end: End) -> str | None:
    """The stop sequence that ended the answer, if one did."""
    return end.meta.get(STOP_SEQUENCE)


def _tool_use(call: ToolCall) -> dict:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": call.args()}


def _event(name: str, data: dict) -> bytes:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {body}\n\n".encode()
