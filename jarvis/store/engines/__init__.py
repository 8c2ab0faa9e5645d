"""The two database engines behind the history store: SQLite (the default) and PostgreSQL.

The store writes its SQL once, in the dialect both engines agree on: ``?``
placeholders, ``db.insert()`` for a new row's id, ``db.begin()`` for a write
transaction. What differs (column types, placeholders, identities, locks,
search, connections) sits in one module per engine. psycopg is imported only
when the URL names PostgreSQL.
"""

from __future__ import annotations

import re

from ...config import ConfigError

# {id}: an identity key; {ref}: a column pointing at one; {real}: a double (timestamps)
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id {id},
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at {real} NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    id {id},
    user_id {ref} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    token_hash TEXT NOT NULL UNIQUE,
    created_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner {ref} REFERENCES users(id) ON DELETE CASCADE,
    title TEXT NOT NULL DEFAULT '',
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    leaf_id {ref},  -- the last message of the versions shown
    settings TEXT  -- a chat's own settings (JSON)
);
CREATE TABLE IF NOT EXISTS messages (
    id {id},
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    parent_id {ref},  -- the message this one follows; NULL for a first prompt
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL,
    trace_id TEXT,
    model TEXT,
    error TEXT,
    meta TEXT,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_session ON messages(session_id, id);
"""

# the tables in an order that satisfies their references (a copy writes them in it)
TABLES = ("users", "tokens", "sessions", "messages")
LIVE_STATUSES = ("pending", "queued", "streaming")
SNIPPET_WORDS = 16


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def shown(database: str) -> str:
    """The database as logs and messages show it: a URL's password is not."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", database)


def open_engine(database: str, *, pool_size: int = 8, timeout_s: float = 5.0):
    """The engine for ``database``: a postgresql:// URL, else a SQLite file."""
    if is_postgres(database):
        try:
            from .postgres import PostgresEngine  # the scale extra: psycopg is needed only here
        except ImportError:
            raise ConfigError("JARVIS_DATABASE in PostgreSQL needs: pip install jarvis[scale]") from None
        return PostgresEngine(database, pool_size=pool_size, timeout_s=timeout_s)
    from .sqlite import SqliteEngine

    return SqliteEngine(database, timeout_s=timeout_s)


def snippet(content: str, words: list[str]) -> str:
    """About SNIPPET_WORDS words of ``content`` around the first of ``words`` found, … where cut."""
    tokens = content.split()
    lowered = [t.lower() for t in tokens]
    at = next((i for i, t in enumerate(lowered) if any(w.lower() in t for w in words)), 0)
    start = max(0, min(at - SNIPPET_WORDS // 4, len(tokens) - SNIPPET_WORDS))
    part = " ".join(tokens[start : start + SNIPPET_WORDS])
    return ("…" if start > 0 else "") + part + ("…" if start + SNIPPET_WORDS < len(tokens) else "")


def like(word: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') that finds ``word`` anywhere, its own % and _ taken literally."""
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
