"""SQLite history: sessions and their messages.

One short-lived connection per call keeps threads apart (waitress serves from
many); WAL lets readers run beside the one writer, and the busy timeout bounds
every wait for the write lock.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from . import tree
from .errors import NotFound, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner INTEGER REFERENCES users(id) ON DELETE CASCADE,
    title TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    leaf_id INTEGER,  -- the last message of the versions shown
    settings TEXT  -- a chat's own settings (JSON)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    parent_id INTEGER,  -- the message this one follows; NULL for a first prompt
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
    created_at REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
"""

# answers are indexed for search once they end: a checkpoint of a growing answer costs no re-index
SEARCH_SCHEMA = """
CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='id');
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
WHEN new.status NOT IN ('pending', 'queued', 'streaming') BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
WHEN old.status NOT IN ('pending', 'queued', 'streaming') BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, status ON messages BEGIN
    -- one trigger, in this order: SQLite runs separate triggers newest first
    INSERT INTO messages_fts (messages_fts, rowid, content) SELECT 'delete', old.id, old.content
        WHERE old.status NOT IN ('pending', 'queued', 'streaming');
    INSERT INTO messages_fts (rowid, content) SELECT new.id, new.content
        WHERE new.status NOT IN ('pending', 'queued', 'streaming');
END;
INSERT INTO messages_fts (rowid, content)
    SELECT id, content FROM messages WHERE status NOT IN ('pending', 'queued', 'streaming');
"""

# an older database's chats become trees: each message follows the one stored before it,
# and each chat shows its last message (each table's column checked apart: either may be new)
TREE_MIGRATION = {
    ("messages", "parent_id"): (
        "ALTER TABLE messages ADD COLUMN parent_id INTEGER",
        "UPDATE messages SET parent_id = (SELECT MAX(p.id) FROM messages p"
        " WHERE p.session_id = messages.session_id AND p.id < messages.id)",
    ),
    ("sessions", "leaf_id"): (
        "ALTER TABLE sessions ADD COLUMN leaf_id INTEGER",
        "UPDATE sessions SET leaf_id = (SELECT MAX(m.id) FROM messages m WHERE m.session_id = sessions.id)",
    ),
}
LEAF = "leaf"  # a new prompt's parent: the session's current leaf

BUSY_TIMEOUT_S = 5.0
TITLE_CHARS = 60
TITLE_MAX_CHARS = 200  # a title someone typed
# a chat nobody wrote in is left out of the list after this long: "New chat" clicks do not pile up
EMPTY_CHAT_S = 300.0
SEARCH_LIMIT = 50
LIVE_STATUSES = ("pending", "queued", "streaming")


class Store:
    """Sessions and messages in one SQLite file.

    Every session call takes ``owner``: a user id, or None when no account exists.
    A session of another owner is reported exactly like an unknown one.
    """

    def __init__(self, path: str):
        self.path = path
        _create_private(path)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            if "generation" not in {r["name"] for r in db.execute("PRAGMA table_info(users)")}:
                # bumped to end every sign-in cookie of a user at once
                db.execute("ALTER TABLE users ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
            if "settings" not in {r["name"] for r in db.execute("PRAGMA table_info(sessions)")}:
                db.execute("ALTER TABLE sessions ADD COLUMN settings TEXT")  # a chat's own settings (JSON)
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchone() is None:
                # one transaction: an older database gets the index and its existing answers at once
                db.executescript("BEGIN IMMEDIATE;" + SEARCH_SCHEMA + "COMMIT;")
            db.execute("BEGIN IMMEDIATE")  # one transaction, checked inside it: two starting processes agree
            for (table, column), statements in TREE_MIGRATION.items():
                if column not in {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}:
                    for statement in statements:
                        db.execute(statement)
            db.execute("COMMIT")
        # held open for the store's life: when the last connection to a WAL database closes,
        # SQLite checkpoints with fsyncs, which cost every short-lived connection milliseconds
        self._keeper = sqlite3.connect(path, check_same_thread=False)
        self._keeper.execute("SELECT 1 FROM sessions LIMIT 1").fetchall()
        for name in (path, path + "-wal", path + "-shm"):  # older installs made them 0644
            if os.path.exists(name):
                os.chmod(name, 0o600)

    def close(self) -> None:
        """Close the long-lived connection (idempotent)."""
        self._keeper.close()

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the database {self.path}: {e}") from e
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        except sqlite3.Error as e:
            raise StoreError(f"database error on {self.path}: {e}") from e
        finally:
            db.close()

    def check_writable(self) -> None:
        """Raise StoreError unless a write transaction can be opened."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")

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
                " ORDER BY updated_at DESC, rowid DESC",
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
            db.execute("BEGIN IMMEDIATE")
            found = db.execute("SELECT 1 FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner))
            if found.fetchone() is None:
                raise NotFound(f"no session {_shown(session_id)}")
            rows = _tree_rows(db, session_id)
            if not any(r["id"] == message_id for r in rows):
                raise NotFound(f"no message {message_id} in this session")
            leaf = tree.newest_leaf(rows, message_id)
            db.execute("UPDATE sessions SET leaf_id = ? WHERE id = ?", (leaf, session_id))
            db.execute("COMMIT")
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
        # each word a quoted prefix: the query language of FTS5 is not the user's to speak
        match = " ".join('"' + w.replace('"', '""') + '"*' for w in words)
        found: dict[str, dict] = {}
        with self.connect() as db:
            rows = db.execute(
                "SELECT s.id, s.title, s.created_at, s.updated_at,"
                " snippet(messages_fts, 0, '', '', '…', 16) AS snippet"
                " FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
                " JOIN sessions s ON s.id = m.session_id"
                " WHERE messages_fts MATCH ? AND s.owner IS ? ORDER BY rank LIMIT ?",
                (match, owner, SEARCH_LIMIT * 4),
            ).fetchall()
            for r in rows:
                found.setdefault(r["id"], dict(r))
            # titles are short and few per owner: every word as a substring, case-blind
            where = " AND ".join(["instr(lower(title), ?) > 0"] * len(words))
            titled = db.execute(
                "SELECT id, title, created_at, updated_at, '' AS snippet FROM sessions"
                f" WHERE owner IS ? AND {where} ORDER BY updated_at DESC LIMIT ?",
                (owner, *[w.lower() for w in words], SEARCH_LIMIT),
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
            db.execute("BEGIN IMMEDIATE")
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
                parent = db.execute(
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
                ).lastrowid
            db.execute("UPDATE sessions SET leaf_id = ? WHERE id = ?", (parent, sid))
            db.execute("COMMIT")
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
            db.execute("BEGIN IMMEDIATE")
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
            db.execute("COMMIT")
        return user, answer

    def add_answer(self, session_id: str, prompt_id: int, trace_id: str, model: str) -> int:
        """Store an empty streaming answer to the stored prompt ``prompt_id``, beside the answers it
        has (a regenerated version), and show it."""
        now = time.time()
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            _require_message(db, session_id, prompt_id, "user")
            answer = _insert(db, session_id, prompt_id, "assistant", "streaming", trace_id, model, now)
            db.execute(
                "UPDATE sessions SET updated_at = ?, leaf_id = ? WHERE id = ?", (now, answer, session_id)
            )
            db.execute("COMMIT")
        return answer

    def prompt_of(self, session_id: str, answer_id: int) -> int:
        """The prompt that the answer ``answer_id`` of the session answers; NotFound for anything else."""
        with self.connect() as db:
            return _require_message(db, session_id, answer_id, "assistant")

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


def _tree_rows(db: sqlite3.Connection, session_id: str, content: bool = False) -> list[dict]:
    columns = "id, parent_id, role, status" + (", content" if content else "")
    rows = db.execute(f"SELECT {columns} FROM messages WHERE session_id = ?", (session_id,))
    return [dict(r) for r in rows]


def _leaf(db: sqlite3.Connection, session_id: str) -> int | None:
    row = db.execute("SELECT leaf_id FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return row["leaf_id"] if row else None


def _require_message(db: sqlite3.Connection, session_id: str, message_id: int, role: str) -> int | None:
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
    return db.execute(
        "INSERT INTO messages (session_id, parent_id, role, content, status, trace_id, model, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, parent_id, role, content, status, trace_id, model, now, now),
    ).lastrowid


def _create_private(path: str) -> None:
    """Create the database file readable by its owner alone; SQLite gives WAL and SHM the same mode."""
    if path != ":memory:" and not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _shown(session_id: str) -> str:
    # an error echoes a bounded id: a client cannot make the answer or the log grow with it
    return repr(session_id if len(session_id) <= 40 else session_id[:40] + "…")


def _title(prompt: str) -> str:
    """A session's title: the prompt's first line, cut to TITLE_CHARS with an ellipsis."""
    line = prompt.strip().splitlines()[0] if prompt.strip() else ""
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def _session(row: sqlite3.Row) -> dict:
    out = dict(row)
    out["settings"] = json.loads(out["settings"]) if out["settings"] else {}
    return out


def _message(row: sqlite3.Row) -> dict:
    out = dict(row)
    out["error"] = json.loads(out["error"]) if out["error"] else None
    out["meta"] = json.loads(out["meta"]) if out["meta"] else None
    return out
