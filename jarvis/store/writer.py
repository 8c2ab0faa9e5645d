"""The answers' writes, off the answers' path: no answer waits for the database.

An answer being streamed is checkpointed and ended through ``AnswerWriter``,
which queues the newest state of each answer, writes it from one thread, and
retries an end the database could not take yet.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from .. import log
from ..errors import DatabaseUnavailable, StoreError
from ..status import LIVE_STATUSES

RETRY_INTERVAL_S = 0.25


@dataclass(eq=False)
class _Write:
    """One answer's newest text and status, to be written."""

    message_id: int
    content: str
    status: str
    error: dict | None
    meta: dict | None
    trace_id: str | None
    deadline: float  # monotonic: a final write is retried until then
    final: bool
    tried: threading.Event = field(default_factory=threading.Event)  # landed, or its first try failed
    next_at: float = 0.0
    retries: int = 0


class SavesAnswers(Protocol):
    def save_answer(
        self, message_id: int, content: str, status: str, error: dict | None, meta: dict | None
    ) -> None: ...


class AnswerWriter:
    """Writes answers' text and status off the answer's path: no answer waits for the database.

    Each answer has at most one write pending, its newest (a checkpoint never
    replaces a final write). One thread writes them in order and ends once none
    is left. A checkpoint that fails is dropped: the next carries its text. A
    final write that finds the database unavailable (down, hung past
    JARVIS_DATABASE_TIMEOUT, locked) is retried every RETRY_INTERVAL_S until
    ``retry_s`` has passed, then logged as ``answer_lost``. ``close`` waits for
    what is pending to a deadline and names what is left.
    """

    def __init__(self, store: SavesAnswers, retry_s: float):
        self.store = store
        self.retry_s = retry_s
        self._cond = threading.Condition()
        self._pending: dict[int, _Write] = {}  # by message id, oldest first
        self._busy: _Write | None = None  # the write under way
        self._thread: threading.Thread | None = None
        self._closed = False

    def save(
        self,
        message_id: int,
        content: str,
        status: str,
        error: dict | None = None,
        meta: dict | None = None,
        trace_id: str | None = None,
    ) -> threading.Event:
        """Queue the answer's text and status (a checkpoint, or the final state); returns an Event set
        once the write has landed or its first try has failed."""
        final = status not in LIVE_STATUSES
        deadline = time.monotonic() + (self.retry_s if final else 0.0)
        write = _Write(message_id, content, str(status), error, meta, trace_id, deadline, final)
        with self._cond:
            closed = self._closed
            old = None if closed else self._pending.get(message_id)
            if old is not None and old.final and not final:
                return old.tried  # a late checkpoint must not undo the end
            if not closed:
                self._pending[message_id] = write  # in the place of the older one
                if self._thread is None:
                    # not a daemon: shutdown joins it (close) once the pending writes are done or due
                    self._thread = threading.Thread(target=self._run, name="jarvis-answer-writer")
                    self._thread.start()
                self._cond.notify_all()
        if old is not None:
            old.tried.set()  # replaced: its waiter waits for nothing
        if closed:  # after shutdown gave up on the writer: one try, here
            self._attempt(write)
            write.tried.set()
        return write.tried

    def unwritten(self) -> dict[int, _Write]:
        """The final writes the database has not taken yet (queued, retried or under way), by message
        id: a read of the history shows them in the table's place."""
        with self._cond:
            found = {w.message_id: w for w in self._pending.values() if w.final}
            if self._busy is not None and self._busy.final:
                found.setdefault(self._busy.message_id, self._busy)  # a queued one is newer
        return found

    def close(self, timeout: float) -> list[_Write]:
        """Wait up to ``timeout`` for the pending writes, then stop: log each final write left as lost
        (or, one still under way, as left) and return them. Later writes are tried once by their
        caller. Idempotent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._closed:
                return []
            while (self._pending or self._busy) and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            self._closed = True
            dropped = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # a write under way ends within the database timeout; past the deadline it is named below
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            stuck = self._busy
        for w in dropped:
            if w.final:
                self._lost(w, "shut down before the database took it")
        if stuck is not None:
            log.event(
                "answer_write_left", logging.WARNING, trace_id=stuck.trace_id, message_id=stuck.message_id,
                status=stuck.status,
            )  # fmt: skip
        return [*dropped, *([stuck] if stuck else [])]

    def _run(self) -> None:
        try:
            while (write := self._take()) is not None:
                retry = self._attempt(write)
                with self._cond:
                    self._busy = None
                    if retry and self._closed:
                        self._lost(write, "shut down before the database took it")
                    elif retry and write.message_id not in self._pending:  # else a newer write replaces it
                        write.next_at = time.monotonic() + RETRY_INTERVAL_S
                        write.retries += 1
                        self._pending[write.message_id] = write
                    self._cond.notify_all()
                write.tried.set()
        finally:
            with self._cond:
                self._thread = None
                self._cond.notify_all()

    def _take(self) -> _Write | None:
        """The oldest write that is due, waiting (bounded by the retries' times) for one; None once
        nothing is left or the writer is closed."""
        with self._cond:
            while self._pending and not self._closed:
                now = time.monotonic()
                due = next((w for w in self._pending.values() if w.next_at <= now), None)
                if due is not None:
                    del self._pending[due.message_id]
                    self._busy = due
                    return due
                self._cond.wait(min(w.next_at for w in self._pending.values()) - now)
            return None

    def _attempt(self, w: _Write) -> bool:
        """Write once; True if it should be tried again."""
        try:
            self.store.save_answer(w.message_id, w.content, w.status, w.error, w.meta)
            return False
        except DatabaseUnavailable as e:
            if not w.final:
                log.log.warning("checkpoint failed trace_id=%s: %s", w.trace_id, e.message)
                return False
            if time.monotonic() + RETRY_INTERVAL_S <= w.deadline:
                if not w.retries:
                    log.event(
                        "answer_write_retrying", logging.WARNING, trace_id=w.trace_id,
                        message_id=w.message_id, status=w.status, error=e.message,
                    )  # fmt: skip
                return True
            self._lost(w, e.message)
        except StoreError as e:  # not a wait: trying again would fail again
            if w.final:
                log.event("store_error", logging.ERROR, trace_id=w.trace_id, error=e.message)
            else:
                log.log.warning("checkpoint failed trace_id=%s: %s", w.trace_id, e.message)
        except Exception:  # a bug: this answer's write is lost, the others go on; say so loudly
            log.log.exception("answer write crashed trace_id=%s", w.trace_id)
        return False

    def _lost(self, w: _Write, why: str) -> None:
        log.event(
            "answer_lost", logging.CRITICAL, trace_id=w.trace_id, message_id=w.message_id, status=w.status,
            chars=len(w.content), error=why,
        )  # fmt: skip
