"""What an answer leaves behind: its text, its meta, its checkpoints and its final write.

The body converts the worker's items into events through a ``Record``; the
record keeps the text and the meta that are stored with the answer, queues a
checkpoint now and then, and hands the final write to the store's background
writer, so that a hung database never holds an answer's end.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..events import Event, Text
from ..events import Progress as ProgressEvent
from ..status import Status
from ..upstream import Done, Meta, Progress

if TYPE_CHECKING:
    from .stream import Stream

END_WRITE_WAIT_S = 0.25  # the longest an answer's end waits for its final write to land


class Record:
    """The text and meta of one answer, and when they were last saved; written by its body alone."""

    def __init__(self, stream: Stream):
        self.config = stream.config
        self.meta: dict = {}  # stored with the answer
        self.parts: list[str] = []
        self.last_flush = time.monotonic()
        self.dirty = False  # text not yet checkpointed
        self.first_text_at: float | None = None

    @property
    def chars(self) -> int:
        return sum(map(len, self.parts))

    def convert(self, s: Stream, items: list) -> list[Event]:
        """The events of the worker's ``items``; text is kept, meta and usage noted."""
        out, texts = [], []
        for item in items:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, Progress):
                out.append(ProgressEvent(item.state, item.position, item.tokens))
            elif isinstance(item, Meta):
                self.meta.update(item.data)
            elif isinstance(item, Done):
                usage = {"prompt_tokens": item.prompt_tokens, "completion_tokens": item.completion_tokens}
                self.meta["usage"] = {k: v for k, v in usage.items() if v is not None}
        if texts:
            if self.first_text_at is None:
                self.first_text_at = time.monotonic()
            s.metrics.tokens.inc(len(texts))
            text = "".join(texts)
            self.parts.append(text)
            self.dirty = True
            out.append(Text(text))
        return out

    def wait_s(self) -> float:
        """How long a reader may wait for news before a heartbeat or a checkpoint is due."""
        cfg = self.config
        if not self.dirty:
            return cfg.heartbeat_s
        due = self.last_flush + cfg.flush_interval_s - time.monotonic()
        return max(0.0, min(cfg.heartbeat_s, due))

    def checkpoint(self, s: Stream) -> None:
        now = time.monotonic()
        if not self.dirty or now - self.last_flush < s.config.flush_interval_s or s.store is None:
            return
        self.last_flush = now
        self.dirty = False
        # queued, never waited for: a hung database must not hold the answer (the next one carries its text)
        s.store.writer.save(s.message_id, "".join(self.parts), "streaming", trace_id=s.trace_id)

    def timing(self, s: Stream) -> dict:
        """Milliseconds from the prompt to the first text and to the end: with the usage, the speed."""
        started = s.started_at
        first = self.first_text_at
        timing = {"duration_ms": round((time.monotonic() - started) * 1000, 1)}
        if first is not None:
            timing["first_token_ms"] = round((first - started) * 1000, 1)
        return timing

    def store_end(self, s: Stream, status: Status, error: dict | None) -> None:
        if s.store is None or s.message_id is None:
            return
        # written and retried in the background: the end goes out and the slot is freed whatever the
        # database does; a database that answers has it stored before the end event
        tried = s.store.writer.save(
            s.message_id, "".join(self.parts), status, error, self.meta or None, s.trace_id
        )
        tried.wait(END_WRITE_WAIT_S)
