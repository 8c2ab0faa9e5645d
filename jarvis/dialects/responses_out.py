"""OpenAI's Responses API, the answer side: the ``response`` object and its streamed events.

A stream is ``response.created`` and ``response.in_progress``, then each output item (the model's
thinking as a ``reasoning`` item's summary, its text as a ``message`` with one ``output_text``
part, each tool call as a ``function_call``) added, grown by deltas and done, then
``response.completed`` (``response.incomplete`` when a token limit cut it). A failure is
``response.failed`` and then an ``error`` event carrying an ``error`` object: the official client
raises that, instead of taking the cut answer as finished.
"""

from __future__ import annotations

import json
import secrets
import time

from .. import sse
from ..conversation import ToolCall
from ..events import End, Event, Heartbeat, Start, Text, Thinking
from . import common, openai

LIMITED = {"reason": "max_output_tokens"}


class ResponseFramer:
    """Frames one answer as Responses events, and keeps what it framed for the final object."""

    def __init__(self, call: common.Call, body: dict, stored: bool):
        self.envelope = Envelope(call, body, stored)
        self._items = secrets.token_hex(8)  # item ids: this prefix and a count
        self._count = 0
        self.seq = 0
        self.output: list[dict] = []  # the items done
        self.open: dict | None = None  # the reasoning or message item being grown
        self.texts: list[str] = []  # the open item's text so far
        self._delta = b""  # the open message's text delta, framed once but for its text and number

    def frame(self, ev: Event, id: str | None = None) -> bytes:
        if isinstance(ev, Text):
            if not ev.text:
                return b""
            out = b"" if self.open is not None and self.open["type"] == "message" else self._open_message()
            self.texts.append(ev.text)
            self.seq += 1
            text = json.dumps(ev.text, ensure_ascii=False).encode()
            return out + self._delta + text + b',"sequence_number":%d}\n\n' % (self.seq - 1)
        if isinstance(ev, Heartbeat):
            return sse.HEARTBEAT
        if isinstance(ev, Thinking):
            out = (
                b"" if self.open is not None and self.open["type"] == "reasoning" else self._open_reasoning()
            )
            self.texts.append(ev.text)
            return out + self._event(
                "response.reasoning_summary_text.delta", **self._at(), summary_index=0, delta=ev.text
            )
        if isinstance(ev, ToolCall):
            return self._close() + self._call(ev)
        if isinstance(ev, Start):
            started = self.envelope.object("in_progress", [], None)
            return self._event("response.created", response=started) + self._event(
                "response.in_progress", response=started
            )
        if isinstance(ev, End):
            return self._close() + self._end(ev)
        return b""  # progress (queued, loading) has no event in this dialect

    def response(self, answer: common.Answer) -> dict:
        """The non-streaming answer: its thinking, its text, then its calls."""
        output = []
        if answer.thinking:
            output.append(_reasoning(self._next("rs"), answer.thinking))
        if answer.text:
            output.append(_message(self._next("msg"), answer.text))
        output += [_function_call(self._next("fc"), c) for c in answer.tool_calls]
        return self.envelope.finished(answer.end, output)

    def _end(self, end: End) -> bytes:
        failure = common.end_error(end)
        if failure is None:
            done = self.envelope.finished(end, self.output)
            kind = "response.completed" if done["status"] == "completed" else "response.incomplete"
            return self._event(kind, response=done)
        status = common.dialect_status(failure.http_status, failure.code)
        error = openai.error_body(status, failure.to_dict())["error"]
        failed = self.envelope.object("failed", self.output, _usage(end))
        failed["error"] = {"code": error["code"] or "server_error", "message": error["message"]}
        out = self._event("response.failed", response=failed)
        return out + self._event(
            "error", code=error["code"], message=error["message"], param=error["param"], error=error
        )

    def _open_message(self) -> bytes:
        out = self._close()
        self.open = {**_message(self._next("msg"), ""), "status": "in_progress", "content": []}
        at = self._at()
        self._delta = _frame_head("response.output_text.delta", {**at, "content_index": 0, "logprobs": []})
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return (
            out
            + self._event("response.output_item.added", output_index=at["output_index"], item=self.open)
            + self._event("response.content_part.added", **at, content_index=0, part=part)
        )

    def _open_reasoning(self) -> bytes:
        out = self._close()
        self.open = {"id": self._next("rs"), "type": "reasoning", "summary": []}
        at = self._at()
        part = {"type": "summary_text", "text": ""}
        return (
            out
            + self._event("response.output_item.added", output_index=at["output_index"], item=self.open)
            + self._event("response.reasoning_summary_part.added", **at, summary_index=0, part=part)
        )

    def _close(self) -> bytes:
        """End the item being grown: its text done, its part done, the item done."""
        if self.open is None:
            return b""
        at, text = self._at(), "".join(self.texts)
        # three events repeat the whole text: it is encoded once and put where a mark stands
        if self.open["type"] == "message":
            item = _message(self.open["id"], _MARK)
            part = item["content"][0]
            out = self._event("response.output_text.done", **at, content_index=0, text=_MARK, logprobs=[])
            out += self._event("response.content_part.done", **at, content_index=0, part=part)
            whole = _message(self.open["id"], text)
        else:
            item = _reasoning(self.open["id"], _MARK)
            out = self._event("response.reasoning_summary_text.done", **at, summary_index=0, text=_MARK)
            out += self._event(
                "response.reasoning_summary_part.done", **at, summary_index=0, part=item["summary"][0]
            )
            whole = _reasoning(self.open["id"], text)
        out += self._event("response.output_item.done", output_index=at["output_index"], item=item)
        self.open, self.texts = None, []
        self.output.append(whole)
        return out.replace(_MARKED, json.dumps(text, ensure_ascii=False).encode())

    def _call(self, call: ToolCall) -> bytes:
        item = _function_call(self._next("fc"), call)
        index = len(self.output)
        self.output.append(item)
        at = {"item_id": item["id"], "output_index": index}
        return (
            self._event(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            + self._event("response.function_call_arguments.delta", **at, delta=call.arguments)
            + self._event(
                "response.function_call_arguments.done", **at, name=call.name, arguments=call.arguments
            )
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    def _at(self) -> dict:
        return {"item_id": self.open["id"], "output_index": len(self.output)}  # type: ignore[index]

    def _next(self, kind: str) -> str:
        self._count += 1
        return f"{kind}_{self._items}{self._count:04x}"

    def _event(self, kind: str, **data) -> bytes:
        self.seq += 1
        payload = {"type": kind, **data, "sequence_number": self.seq - 1}
        return _sse(kind, payload)


class Envelope:
    """The ``response`` object around the output: its id and time, what the request asked for."""

    def __init__(self, call: common.Call, body: dict, stored: bool):
        self.id = "resp_" + secrets.token_hex(12)
        self.created_at = int(time.time())
        self.echo = _echo(call, body, stored)

    def object(self, status: str, output: list, usage: dict | None, incomplete=None) -> dict:
        """The ``response`` object, as it stands."""
        head = {"id": self.id, "object": "response", "created_at": self.created_at, "status": status}
        return {
            **head,
            "error": None,
            "incomplete_details": incomplete,
            **self.echo,
            "output": list(output),
            "usage": usage,
        }

    def finished(self, end: End, output: list[dict]) -> dict:
        """The object of an answer that ended: completed, or incomplete when a token limit cut it."""
        if str(end.status) == "length":
            return self.object("incomplete", output, _usage(end), LIMITED)
        return self.object("completed", output, _usage(end))


def _echo(call: common.Call, body: dict, stored: bool) -> dict:
    """What the request asked for, as the response object repeats it."""
    chat = call.chat
    reasoning = body.get("reasoning") or {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": chat.options.max_tokens,
        "model": chat.model,
        "parallel_tool_calls": chat.parallel_tool_calls,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": stored,
        "temperature": chat.options.temperature,
        "text": {"format": (body.get("text") or {}).get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": chat.options.top_p,
        "truncation": "disabled",
        "user": body.get("user"),
        "metadata": {},
    }


def _message(ident: str, text: str) -> dict:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": ident, "type": "message", "status": "completed", "role": "assistant", "content": [part]}


def _reasoning(ident: str, text: str) -> dict:
    return {"id": ident, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


def _function_call(ident: str, call: ToolCall) -> dict:
    item = {"id": ident, "type": "function_call", "status": "completed", "call_id": call.id}
    return {**item, "name": call.name, "arguments": call.arguments}


def _usage(end: End) -> dict | None:
    counts = end.meta.get("usage") or {}
    if "prompt_tokens" not in counts and "completion_tokens" not in counts:
        return None
    prompt, completion = counts.get("prompt_tokens", 0), counts.get("completion_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


_MARK = "\x00jarvis:the item's text\x00"  # no answer's whole text is this (a quoted JSON string)
_MARKED = json.dumps(_MARK, ensure_ascii=False).encode()


def _sse(kind: str, payload: dict) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def _frame_head(kind: str, fields: dict) -> bytes:
    """An event's frame up to its ``delta`` value: the rest is the text and the sequence number."""
    head = json.dumps({"type": kind, **fields}, ensure_ascii=False, separators=(",", ":"))
    return f'event: {kind}\ndata: {head[:-1]},"delta":'.encode()
