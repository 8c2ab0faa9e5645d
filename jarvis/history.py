"""SQLite history: sessions and their messages.

Each thread keeps one connection (waitress serves from a fixed pool of
threads): opening a connection per call cost a prompt 1-3 ms more. WAL lets
readers run beside the one writer, and the busy timeout bounds every wait for
the write lock. A connection closes with its thread, or at ``close()``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import NotFound, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner INTEGER REFERENCES users(id) ON DELETE CASCADE,
    title TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL,
    trace_id TEXT,
    model TEXT,
    error TEXT,
    meta TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_session ON messages(session_id, id);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
"""

BUSY_TIMEOUT_S = 5.0


class Store:
    """Sessions and messages in one SQLite file.

    Every session call takes ``owner``: a user id, or None when no account exists.
    A session of another owner is reported exactly like an unknown one.
    """

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the set of open connections
        self._open: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._generation = 0  # bumped by close(): a thread's older connection is replaced
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def close(self) -> None:
        """Close every thread's connection (idempotent); a later call opens a new one."""
        with self._lock:
            self._generation += 1
            held, self._open = list(self._open), weakref.WeakSet()
        for h in held:
            h.db.close()

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection; SQLite errors become StoreError."""
        try:
            db = self._connection()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the database {self.path}: {e}") from e
        try:
            yield db
        except sqlite3.Error as e:
            if db.in_transaction:
                db.rollback()  # the connection outlives this call: leave no transaction open
            raise StoreError(f"database error on {self.path}: {e}") from e

    def _connection(self) -> sqlite3.Connection:
        held = getattr(self._local, "held", None)
        if held is not None and held.generation == self._generation:
            return held.db
        # check_same_thread off: close() closes it from another thread, its owner uses it alone
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=NORMAL")
        held = _Held(db, self._generation)
        weakref.finalize(held, db.close)  # the thread ended: its connection goes with it
        with self._lock:
            self._open.add(held)
        self._local.held = held
        return db

    def check_writable(self) -> None:
        """Raise StoreError unless a write transaction can be opened."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")

    def recover(self) -> int:
        """Mark answers left streaming by a crash as interrupted; returns how many."""
        with self.connect() as db:
            cur = db.execute(
                "UPDATE messages SET status='interrupted', updated_at=? WHERE status='streaming'",
                (time.time(),),
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

    def list_sessions(self, owner: int | None = None) -> list[dict]:
        with self.connect() as db:
            rows = db.execute(
                "SELECT id, title, created_at, updated_at FROM sessions WHERE owner IS ?"
                " ORDER BY updated_at DESC, rowid DESC",
                (owner,),
            ).fetchall()
        return [dict(r) for r in rows]

    def get_session(self, session_id: str, owner: int | None = None) -> dict:
        """The session with its messages, oldest first; NotFound if unknown or not the owner's."""
        with self.connect() as db:
            row = db.execute(
                "SELECT id, title, created_at, updated_at FROM sessions WHERE id = ? AND owner IS ?",
                (session_id, owner),
            ).fetchone()
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            rows = db.execute(
                "SELECT * FROM messages WHERE session_id = ? ORDER BY id", (session_id,)
            ).fetchall()
        return {**dict(row), "messages": [_message(r) for r in rows]}

    def require_session(self, session_id: str, owner: int | None = None) -> None:
        with self.connect() as db:
            found = db.execute("SELECT 1 FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner))
            if found.fetchone() is None:
                raise NotFound(f"no session {session_id!r}")

    def delete_session(self, session_id: str, owner: int | None = None) -> None:
        with self.connect() as db:
            deleted = db.execute("DELETE FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner))
            if deleted.rowcount == 0:
                raise NotFound(f"no session {session_id!r}")

    def context(self, session_id: str) -> list[dict]:
        """The conversation to send upstream: prompts and completed answers, oldest first."""
        with self.connect() as db:
            rows = db.execute(
                "SELECT role, content FROM messages WHERE session_id = ? AND "
                "(role = 'user' OR status IN ('completed', 'length')) ORDER BY id",
                (session_id,),
            ).fetchall()
        return [{"role": r["role"], "content": r["content"]} for r in rows]

    def add_exchange(self, session_id: str, prompt: str, trace_id: str, model: str) -> tuple[int, int]:
        """Store the prompt and an empty streaming answer in one transaction."""
        now = time.time()
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            user = db.execute(
                "INSERT INTO messages (session_id, role, content, status, trace_id, model, created_at,"
                " updated_at) VALUES (?, 'user', ?, 'sent', ?, ?, ?, ?)",
                (session_id, prompt, trace_id, model, now, now),
            ).lastrowid
            answer = db.execute(
                "INSERT INTO messages (session_id, role, content, status, trace_id, model, created_at,"
                " updated_at) VALUES (?, 'assistant', '', 'streaming', ?, ?, ?, ?)",
                (session_id, trace_id, model, now, now),
            ).lastrowid
            title = prompt.strip().splitlines()[0][:60] if prompt.strip() else ""
            db.execute(
                "UPDATE sessions SET updated_at = ?, title = CASE WHEN title = '' THEN ? ELSE title END"
                " WHERE id = ?",
                (now, title, session_id),
            )
            db.execute("COMMIT")
        return user, answer

    def save_answer(
        self, message_id: int, content: str, status: str, error: dict | None = None, meta: dict | None = None
    ) -> None:
        """Write the answer's text so far and its status (a checkpoint, or the final state)."""
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


class _Held:
    """One thread's connection, weakly tracked so close() can reach it and its thread's end closes it."""

    __slots__ = ("db", "generation", "__weakref__")

    def __init__(self, db: sqlite3.Connection, generation: int):
        self.db = db
        self.generation = generation


def _message(row: sqlite3.Row) -> dict:
    out = dict(row)
    out["error"] = json.loads(out["error"]) if out["error"] else None
    out["meta"] = json.loads(out["meta"]) if out["meta"] else None
    return out
