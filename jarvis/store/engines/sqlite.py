"""SQLite: one file, one short-lived connection per call, FTS5 for search.

One short-lived connection per call keeps threads apart (waitress serves from
many); WAL lets readers run beside the one writer, and the busy timeout
(JARVIS_DATABASE_TIMEOUT) bounds every wait for the write lock: past it the
call fails with DatabaseUnavailable, a 503 that a final write retries.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ...errors import DatabaseUnavailable, StoreError
from ...status import LIVE_STATUSES
from . import SCHEMA

TYPES = {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "ref": "INTEGER", "real": "REAL", "blob": "BLOB"}
# the write lock held by another connection past the busy timeout (or a lock SQLite will not wait for)
BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

# a trigger takes no parameters: the live statuses are written into it
_LIVE = ", ".join(f"'{status}'" for status in LIVE_STATUSES)
# answers are indexed for search once they end: a checkpoint of a growing answer costs no re-index
SEARCH_SCHEMA = f"""
CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='id');
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
WHEN new.status NOT IN ({_LIVE}) BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
WHEN old.status NOT IN ({_LIVE}) BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, status ON messages BEGIN
    -- one trigger, in this order: SQLite runs separate triggers newest first
    INSERT INTO messages_fts (messages_fts, rowid, content) SELECT 'delete', old.id, old.content
        WHERE old.status NOT IN ({_LIVE});
    INSERT INTO messages_fts (rowid, content) SELECT new.id, new.content
        WHERE new.status NOT IN ({_LIVE});
END;
INSERT INTO messages_fts (rowid, content)
    SELECT id, content FROM messages WHERE status NOT IN ({_LIVE});
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


class Connection(sqlite3.Connection):
    """A SQLite connection speaking the store's dialect (``jarvis.store.engines.Connection``)."""

    def same(self, column: str) -> str:
        return f"{column} IS ?"

    def insert(self, sql: str, params=()) -> int:
        """Run an INSERT; returns the new row's id."""
        return self.execute(sql, params).lastrowid

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")  # the write lock now: a read then a write cannot be overtaken


class SqliteEngine:
    name = "sqlite"

    def __init__(self, path: str, *, timeout_s: float = 5.0):
        self.path = self.where = path
        self.timeout_s = timeout_s
        _create_private(path)
        with self.connect() as db:
            _migrate(db)
        # held open for the store's life: when the last connection to a WAL database closes,
        # SQLite checkpoints with fsyncs, which cost every short-lived connection milliseconds
        self._keeper = sqlite3.connect(path, check_same_thread=False)
        self._keeper.execute("SELECT 1 FROM sessions LIMIT 1").fetchall()
        for name in (path, path + "-wal", path + "-shm"):  # older installs made them 0644
            if os.path.exists(name):
                os.chmod(name, 0o600)

    def close(self) -> None:
        self._keeper.close()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, factory=Connection)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the database {self.path}: {e}") from e
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        except sqlite3.OperationalError as e:
            if (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF in BUSY_CODES:
                raise DatabaseUnavailable(f"{self.path} stayed locked for {self.timeout_s} s: {e}") from e
            raise StoreError(f"database error on {self.path}: {e}") from e
        except sqlite3.Error as e:
            raise StoreError(f"database error on {self.path}: {e}") from e
        finally:
            db.close()

    def search(self, db: Connection, words: list[str], owner: int | None, limit: int) -> list[dict]:
        """Sessions whose finished messages hold every word (as a prefix), best match first."""
        # each word a quoted prefix: the query language of FTS5 is not the user's to speak
        match = " ".join('"' + w.replace('"', '""') + '"*' for w in words)
        rows = db.execute(
            "SELECT s.id, s.title, s.created_at, s.updated_at,"
            " snippet(messages_fts, 0, '', '', '…', 16) AS snippet"
            " FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
            " JOIN sessions s ON s.id = m.session_id"
            " WHERE messages_fts MATCH ? AND s.owner IS ? ORDER BY rank LIMIT ?",
            (match, owner, limit),
        ).fetchall()
        return [dict(r) for r in rows]

    def after_copy(self, db: Connection) -> None:
        """Nothing to do: AUTOINCREMENT follows the ids written."""


def _migrate(db: Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA.format(**TYPES))
    if "generation" not in _columns(db, "users"):
        # bumped to end every sign-in cookie of a user at once
        db.execute("ALTER TABLE users ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")
    if "settings" not in _columns(db, "sessions"):
        db.execute("ALTER TABLE sessions ADD COLUMN settings TEXT")  # a chat's own settings (JSON)
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchone() is None:
        # one transaction: an older database gets the index and its existing answers at once
        db.executescript("BEGIN IMMEDIATE;" + SEARCH_SCHEMA + "COMMIT;")
    db.begin()  # one transaction, checked inside it: two starting processes agree
    for (table, column), statements in TREE_MIGRATION.items():
        if column not in _columns(db, table):
            for statement in statements:
                db.execute(statement)
    db.commit()


def _columns(db: Connection, table: str) -> set[str]:
    return {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}


def _create_private(path: str) -> None:
    """Create the database file readable by its owner alone; SQLite gives WAL and SHM the same mode."""
    if path != ":memory:" and not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
