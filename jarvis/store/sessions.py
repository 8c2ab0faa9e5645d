"""History: sessions and their messages, in SQLite or PostgreSQL.

The SQL is written once, in what both engines agree on; ``jarvis.store.engines``
holds what differs (connections, locks, column types, search).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .. import log
from ..errors import DatabaseUnavailable, NotFound, StoreError
from . import tree
from .engines import like, open_engine

LEAF = "leaf"  # a new prompt's parent: the session's current leaf

TITLE_CHARS = 60
TITLE_MAX_CHARS = 200  # a title someone typed
# a chat nobody wrote in is left out of the list after this long: "New chat" clicks do not pile up
EMPTY_CHAT_S = 300.0
SEARCH_LIMIT = 50
LIVE_STATUSES = ("pending", "queued", "streaming")
RETRY_INTERVAL_S = 0.25


class Store:
    """Sessions and messages in a SQLite file or a PostgreSQL database (``database`` is a path or a URL).

    Every session call takes ``owner``: a user id, or None when no account exists.
    A session of another owner is reported exactly like an unknown one.
    """

    def __init__(
        self, database: str, *, pool_size: int = 8, timeout_s: float = 5.0, final_retry_s: float = 10.0
    ):
        self.engine = open_engine(database, pool_size=pool_size, timeout_s=timeout_s)
        self.final_retry_s = final_retry_s
        self.writer = AnswerWriter(self, final_retry_s)  # the answers' writes, off their path

    def close(self) -> None:
        """Close the engine's long-lived connections (idempotent); writes still pending are named lost."""
        self.writer.close(0.0)
        self.engine.close()

    @contextmanager
    def connect(self) -> Iterator:
        """A connection that takes ``?`` placeholders and opens write transactions with ``begin()``."""
        with self.engine.connect() as db:
            yield db

    def check_writable(self) -> None:
        """Raise StoreError unless a write transaction can be opened."""
        with self.connect() as db:
            db.begin()
            db.rollback()

    def recover(self, sessions: Iterable[str] | None = None) -> int:
        """Mark answers left streaming by a crash as interrupted (only those of ``sessions``, if given:
        the others may be live in another process); returns how many."""
        now = time.time()
        with self.connect() as db:
            if sessions is None:
                cur = db.execute(
                    "UPDATE messages SET status='interrupted', updated_at=? WHERE status='streaming'", (now,)
                )
                return cur.rowcount
            marked = 0
            for sid in sessions:
                marked += db.execute(
                    "UPDATE messages SET status='interrupted', updated_at=? WHERE status='streaming'"
                    " AND session_id=?",
                    (now, sid),
                ).rowcount
            return marked

    def streaming_sessions(self) -> set[str]:
        """The sessions that have an answer marked streaming."""
        with self.connect() as db:
            rows = db.execute("SELECT DISTINCT session_id FROM messages WHERE status='streaming'")
            return {r["session_id"] for r in rows}

    def interrupt(self, trace_id: str) -> int:
        """Mark the answer ``trace_id`` interrupted if it is still streaming (its process died);
        returns how many. A live process's final save overwrites it."""
        with self.connect() as db:
            cur = db.execute(
                "UPDATE messages SET status='interrupted', updated_at=?"
                " WHERE trace_id=? AND role='assistant' AND status='streaming'",
                (time.time(), trace_id),
            )
            return cur.rowcount

    def create_session(self, owner: int | None = None, title: str = "") -> dict:
        now = time.time()
        sid = secrets.token_urlsafe(18)  # 144 random bits
        with self.connect() as db:
            db.execute(
                "INSERT INTO sessions (id, owner, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (sid, owner, title, now, now),
            )
        return {"id": sid, "title": title, "created_at": now, "updated_at": now}

    def list_sessions(self, owner: int | None = None, now: float | None = None) -> list[dict]:
        """The owner's sessions, newest first, without those left empty for EMPTY_CHAT_S."""
        cutoff = (time.time() if now is None else now) - EMPTY_CHAT_S
        with self.connect() as db:
            rows = db.execute(
                "SELECT id, title, created_at, updated_at FROM sessions s WHERE owner IS ?"
                " AND (created_at > ? OR EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id))"
                " ORDER BY updated_at DESC, created_at DESC",
                (owner, cutoff),
            ).fetchall()
        return [dict(r) for r in rows]

    def rename_session(self, session_id: str, title: str, owner: int | None = None) -> dict:
        """Give the session a title of the caller's; NotFound if unknown or not the owner's."""
        with self.connect() as db:
            renamed = db.execute(
                "UPDATE sessions SET title = ? WHERE id = ? AND owner IS ?", (title, session_id, owner)
            )
            if renamed.rowcount == 0:
                raise NotFound(f"no session {_shown(session_id)}")
            row = db.execute(
                "SELECT id, title, created_at, updated_at, settings FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
        return _session(row)

    def get_session(self, session_id: str, owner: int | None = None) -> dict:
        """The session with the messages of the versions shown, oldest first; NotFound if unknown
        or not the owner's."""
        with self.connect() as db:
            row = db.execute(
                "SELECT id, title, created_at, updated_at, leaf_id, settings FROM sessions"
                " WHERE id = ? AND owner IS ?",
                (session_id, owner),
            ).fetchone()
            if row is None:
                raise NotFound(f"no session {_shown(session_id)}")
            rows = db.execute("SELECT * FROM messages WHERE session_id = ?", (session_id,)).fetchall()
        rows = [_message(r) for r in rows]
        return {**_session(row), "messages": tree.with_versions(rows, row["leaf_id"])}

    def show_version(self, session_id: str, message_id: int, owner: int | None = None) -> dict:
        """Show the versions through ``message_id``: the leaf becomes the newest one under it.

        Returns the session as ``get_session`` does; NotFound for a message of another session."""
        with self.connect() as db:
            db.begin()
            found = db.execute("SELECT 1 FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner))
            if found.fetchone() is None:
                raise NotFound(f"no session {_shown(session_id)}")
            rows = _tree_rows(db, session_id)
            if not any(r["id"] == message_id for r in rows):
                raise NotFound(f"no message {message_id} in this session")
            leaf = tree.newest_leaf(rows, message_id)
            db.execute("UPDATE sessions SET leaf_id = ? WHERE id = ?", (leaf, session_id))
            db.commit()
        return self.get_session(session_id, owner)

    def settings(self, session_id: str, owner: int | None = None) -> dict:
        """The session's settings ({} when it has none); NotFound if unknown or not the owner's."""
        with self.connect() as db:
            row = db.execute(
                "SELECT settings FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner)
            ).fetchone()
        if row is None:
            raise NotFound(f"no session {_shown(session_id)}")
        return json.loads(row["settings"]) if row["settings"] else {}

    def set_settings(self, session_id: str, settings: dict, owner: int | None = None) -> dict:
        """Replace the session's settings (already checked); NotFound if unknown or not the owner's."""
        with self.connect() as db:
            changed = db.execute(
                "UPDATE sessions SET settings = ? WHERE id = ? AND owner IS ?",
                (json.dumps(settings) if settings else None, session_id, owner),
            )
            if changed.rowcount == 0:
                raise NotFound(f"no session {_shown(session_id)}")
            row = db.execute(
                "SELECT id, title, created_at, updated_at, settings FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
        return _session(row)

    def search(self, query: str, owner: int | None = None) -> list[dict]:
        """The owner's sessions whose title or messages hold every word of ``query``, best first."""
        words = query.split()
        if not words:
            return []
        found: dict[str, dict] = {}
        with self.connect() as db:
            for r in self.engine.search(db, words, owner, SEARCH_LIMIT * 4):
                found.setdefault(r["id"], r)
            # titles are short and few per owner: every word as a substring, case-blind
            where = " AND ".join(["lower(title) LIKE ? ESCAPE '\\'"] * len(words))
            titled = db.execute(
                "SELECT id, title, created_at, updated_at, '' AS snippet FROM sessions"
                f" WHERE owner IS ? AND {where} ORDER BY updated_at DESC LIMIT ?",
                (owner, *[like(w.lower()) for w in words], SEARCH_LIMIT),
            ).fetchall()
        for r in titled:
            found.setdefault(r["id"], dict(r))
        return list(found.values())[:SEARCH_LIMIT]

    def import_session(
        self, title: str, messages: list[dict], owner: int | None = None, settings: dict | None = None
    ) -> dict:
        """Store a whole chat read from an export, in one transaction; returns the new session."""
        now = time.time()
        sid = secrets.token_urlsafe(18)
        with self.connect() as db:
            db.begin()
            db.execute(
                "INSERT INTO sessions (id, owner, title, created_at, updated_at, settings)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    sid,
                    owner,
                    title,
                    messages[0]["created_at"] if messages else now,
                    now,
                    json.dumps(settings) if settings else None,
                ),
            )
            parent = None  # an import is one line of messages
            for m in messages:
                parent = db.insert(
                    "INSERT INTO messages (session_id, parent_id, role, content, status, model, error, meta,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        sid,
                        parent,
                        m["role"],
                        m["content"],
                        m["status"],
                        m.get("model"),
                        json.dumps(m["error"]) if m.get("error") else None,
                        json.dumps(m["meta"]) if m.get("meta") else None,
                        m["created_at"],
                        m["created_at"],
                    ),
                )
            db.execute("UPDATE sessions SET leaf_id = ? WHERE id = ?", (parent, sid))
            db.commit()
        return {"id": sid, "title": title, "created_at": now, "updated_at": now}

    def require_session(self, session_id: str, owner: int | None = None) -> None:
        with self.connect() as db:
            found = db.execute("SELECT 1 FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner))
            if found.fetchone() is None:
                raise NotFound(f"no session {_shown(session_id)}")

    def delete_session(self, session_id: str, owner: int | None = None) -> None:
        with self.connect() as db:
            deleted = db.execute("DELETE FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner))
            if deleted.rowcount == 0:
                raise NotFound(f"no session {_shown(session_id)}")

    def context(self, session_id: str, upto: int | None | str = LEAF) -> list[dict]:
        """The conversation to send upstream: the prompts and completed answers on the path to
        ``upto`` (a message of the session, None for nothing, LEAF for the versions shown)."""
        if upto is None:
            return []
        with self.connect() as db:
            rows = _tree_rows(db, session_id, content=True)
            if upto == LEAF:
                upto = _leaf(db, session_id)
            elif not any(r["id"] == upto for r in rows):
                raise NotFound(f"no message {upto} in this session")
        return [
            {"role": r["role"], "content": r["content"]}
            for r in tree.path(rows, upto)
            if r["role"] == "user" or r["status"] in ("completed", "length")
        ]

    def add_exchange(
        self, session_id: str, prompt: str, trace_id: str, model: str, parent_id: int | None | str = LEAF
    ) -> tuple[int, int]:
        """Store the prompt and an empty streaming answer in one transaction, and show them.

        The prompt follows ``parent_id``: an answer of the session, None for a first prompt, or
        LEAF (the versions shown). A prompt under an earlier answer is an edit: a new version."""
        now = time.time()
        with self.connect() as db:
            db.begin()
            if parent_id == LEAF:
                parent_id = _leaf(db, session_id)
            elif parent_id is not None:
                _require_message(db, session_id, parent_id, "assistant")
            user = _insert(db, session_id, parent_id, "user", "sent", trace_id, model, now, prompt)
            answer = _insert(db, session_id, user, "assistant", "streaming", trace_id, model, now)
            title = _title(prompt)
            db.execute(
                "UPDATE sessions SET updated_at = ?, leaf_id = ?,"
                " title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
                (now, answer, title, session_id),
            )
            db.commit()
        return user, answer

    def add_answer(self, session_id: str, prompt_id: int, trace_id: str, model: str) -> int:
        """Store an empty streaming answer to the stored prompt ``prompt_id``, beside the answers it
        has (a regenerated version), and show it."""
        now = time.time()
        with self.connect() as db:
            db.begin()
            _require_message(db, session_id, prompt_id, "user")
            answer = _insert(db, session_id, prompt_id, "assistant", "streaming", trace_id, model, now)
            db.execute(
                "UPDATE sessions SET updated_at = ?, leaf_id = ? WHERE id = ?", (now, answer, session_id)
            )
            db.commit()
        return answer

    def prompt_of(self, session_id: str, answer_id: int) -> int:
        """The prompt that the answer ``answer_id`` of the session answers; NotFound for anything else."""
        with self.connect() as db:
            return _require_message(db, session_id, answer_id, "assistant")

    def save_answer(
        self, message_id: int, content: str, status: str, error: dict | None = None, meta: dict | None = None
    ) -> None:
        """Write the answer's text so far and its status, once, here; an answer being streamed is
        written through ``writer`` instead, which retries and never holds it."""
        with self.connect() as db:
            db.execute(
                "UPDATE messages SET content = ?, status = ?, error = ?, meta = COALESCE(?, meta),"
                " updated_at = ? WHERE id = ?",
                (
                    content,
                    status,
                    json.dumps(error) if error else None,
                    json.dumps(meta) if meta else None,
                    time.time(),
                    message_id,
                ),
            )


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

    def __init__(self, store: Store, retry_s: float):
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


def _tree_rows(db, session_id: str, content: bool = False) -> list[dict]:
    columns = "id, parent_id, role, status" + (", content" if content else "")
    rows = db.execute(f"SELECT {columns} FROM messages WHERE session_id = ?", (session_id,))
    return [dict(r) for r in rows]


def _leaf(db, session_id: str) -> int | None:
    row = db.execute("SELECT leaf_id FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return row["leaf_id"] if row else None


def _require_message(db, session_id: str, message_id: int, role: str) -> int | None:
    """The parent of the session's message ``message_id``, which must be written by ``role``."""
    row = db.execute(
        "SELECT parent_id FROM messages WHERE id = ? AND session_id = ? AND role = ?",
        (message_id, session_id, role),
    ).fetchone()
    if row is None:
        who = "prompt" if role == "user" else "answer"
        raise NotFound(f"no {who} {message_id} in this session")
    return row["parent_id"]


def _insert(db, session_id, parent_id, role, status, trace_id, model, now, content="") -> int:
    return db.insert(
        "INSERT INTO messages (session_id, parent_id, role, content, status, trace_id, model, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, parent_id, role, content, status, trace_id, model, now, now),
    )


def _shown(session_id: str) -> str:
    # an error echoes a bounded id: a client cannot make the answer or the log grow with it
    return repr(session_id if len(session_id) <= 40 else session_id[:40] + "…")


def _title(prompt: str) -> str:
    """A session's title: the prompt's first line, cut to TITLE_CHARS with an ellipsis."""
    line = prompt.strip().splitlines()[0] if prompt.strip() else ""
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def _session(row) -> dict:
    out = dict(row)
    out["settings"] = json.loads(out["settings"]) if out["settings"] else {}
    return out


def _message(row) -> dict:
    out = dict(row)
    out["error"] = json.loads(out["error"]) if out["error"] else None
    out["meta"] = json.loads(out["meta"]) if out["meta"] else None
    return out
