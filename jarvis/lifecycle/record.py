"""What an answer leaves behind: its text, its meta, its checkpoints and its final write.

The body converts the worker's items into events through a ``Record``; the
record keeps the text and the meta that are stored with the answer, queues a
checkpoint now and then, and hands the final write to the store's background
writer, so that a hung database never holds an answer's end.
"""

from __future__ import annotations

import time

from ..events import Event, Text, Thinking, ToolCall, ToolResult
from ..events import Progress as ProgressEvent
from ..status import Status
from ..upstream import Done, Meta, Progress
from .answer import Answer

END_WRITE_WAIT_S = 0.25  # the longest an answer's end waits for its final write to land


class Record:
    """The text and meta of one answer, and when they were last saved; written by its body alone."""

    def __init__(self, stream: Answer):
        self.config = stream.config
        self.meta: dict = {}  # stored with the answer
        self.parts: list[str] = []
        self.thinking: list[str] = []
        self.thinking_started_at: float | None = None
        self.tool_calls: list[ToolCall] = []
        self.call_at: dict[str, int] = {}
        self.results: dict[str, ToolResult] = {}  # what the tools Jarvis ran gave back, by call id
        self.last_flush = time.monotonic()
        self.dirty = False  # text not yet checkpointed
        self.first_text_at: float | None = None

    @property
    def chars(self) -> int:
        return sum(map(len, self.parts))

    def convert(self, s: Answer, items: list) -> list[Event]:
        """The events of the worker's ``items``; text, thinking and tool calls are kept, meta and
        usage noted. A run of text (or of thinking) becomes one event."""
        out: list[Event] = []
        texts: list[str] = []
        thoughts: list[str] = []
        for item in items:
            if isinstance(item, str):
                self._think(out, thoughts)
                texts.append(item)
                continue
            if isinstance(item, Thinking):
                self._say(s, out, texts)
                thoughts.append(item.text)
                continue
            self._say(s, out, texts)
            self._think(out, thoughts)
            if isinstance(item, ToolCall):
                self.tool_calls.append(item)
                self.call_at[item.id] = self.chars  # where in the text it was made
                self.dirty = True
                out.append(item)
            elif isinstance(item, ToolResult):
                self.results[item.id] = item
                self.dirty = True
                out.append(item)
            elif isinstance(item, Progress):
                out.append(ProgressEvent(item.state, item.position, item.tokens))
            elif isinstance(item, Meta):
                self.meta.update(item.data)
            elif isinstance(item, Done):
                usage = {"prompt_tokens": item.prompt_tokens, "completion_tokens": item.completion_tokens}
                self.meta["usage"] = {k: v for k, v in usage.items() if v is not None}
        self._say(s, out, texts)
        self._think(out, thoughts)
        return out

    def _say(self, s: Answer, out: list[Event], texts: list[str]) -> None:
        if not texts:
            return
        if self.first_text_at is None:
            self.first_text_at = time.monotonic()
        s.metrics.tokens.inc(len(texts))
        text = "".join(texts)
        texts.clear()
        self.parts.append(text)
        self.dirty = True
        out.append(Text(text))

    def _think(self, out: list[Event], thoughts: list[str]) -> None:
        if not thoughts:
            return
        text = "".join(thoughts)
        thoughts.clear()
        if self.thinking_started_at is None:
            self.thinking_started_at = time.monotonic()
        self.thinking.append(text)
        self.dirty = True
        out.append(Thinking(text))

    def stored_meta(self) -> dict | None:
        """The meta stored with the answer: usage and trims, and what it thought and called."""
        meta = dict(self.meta)
        if self.thinking:
            meta["thinking"] = "".join(self.thinking)
            if self.thinking_started_at is not None:
                end = self.first_text_at or time.monotonic()
                meta["thinking_ms"] = round((end - self.thinking_started_at) * 1000)
        if self.tool_calls:
            meta["tool_calls"] = [self._stored_call(c) for c in self.tool_calls]
        return meta or None

    def _stored_call(self, call: ToolCall) -> dict:
        """A call as stored; one Jarvis ran has its result and where in the text it was made."""
        result = self.results.get(call.id)
        if result is None:
            return call.to_dict()
        return call.to_dict() | {"at": self.call_at[call.id], "result": result.to_dict() | {"id": call.id}}

    def wait_s(self) -> float:
        """How long a reader may wait for news before a heartbeat or a checkpoint is due."""
        cfg = self.config
        if not self.dirty:
            return cfg.heartbeat_s
        due = self.last_flush + cfg.flush_interval_s - time.monotonic()
        return max(0.0, min(cfg.heartbeat_s, due))

    def checkpoint(self, s: Answer) -> None:
        now = time.monotonic()
        if not self.dirty or now - self.last_flush < s.config.flush_interval_s or s.store is None:
            return
        self.last_flush = now
        self.dirty = False
        # queued, never waited for: a hung database must not hold the answer (the next one carries its text)
        s.store.writer.save(
            s.message_id, "".join(self.parts), "streaming", meta=self.stored_meta(), trace_id=s.trace_id
        )

    def timing(self, s: Answer) -> dict:
        """Milliseconds from the prompt to the first text and to the end: with the usage, the speed."""
        started = s.started_at
        first = self.first_text_at
        timing = {"duration_ms": round((time.monotonic() - started) * 1000, 1)}
        if first is not None:
            timing["first_token_ms"] = round((first - started) * 1000, 1)
        return timing

    def store_end(self, s: Answer, status: Status, error: dict | None) -> None:
        if s.store is None or s.message_id is None:
            return
        # written and retried in the background: the end goes out and the slot is freed whatever the
        # database does; a database that answers has it stored before the end event
        tried = s.store.writer.save(
            s.message_id, "".join(self.parts), status, error, self.stored_meta(), s.trace_id
        )
        tried.wait(END_WRITE_WAIT_S)
