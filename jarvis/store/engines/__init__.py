"""The two database engines behind the history store: SQLite (the default) and PostgreSQL.

The store writes its SQL once, in the dialect both engines agree on, and asks
the engine's connection for what differs: ``Engine`` and ``Connection`` below
are the whole interface. A statement takes ``?`` as its placeholder (the
DB-API's qmark style: an engine whose driver speaks another maps it, and
nothing else); ``same(column)`` compares a column with a parameter that may
be None; ``insert()`` returns a new row's id; ``begin()`` opens a write
transaction. Column types, locks, search, connections and their faults sit in
one module per engine. psycopg is imported only when the URL names PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ...config import ConfigError


class Connection(Protocol):
    """One connection, lent for one ``with engine.connect()`` block; rows read as mappings."""

    def execute(self, sql: str, params: Sequence = ()) -> Any:
        """Run one statement with ``?`` placeholders; returns a DB-API cursor."""

    def executemany(self, sql: str, rows: list[tuple]) -> Any: ...

    def insert(self, sql: str, params: Sequence = ()) -> int:
        """Run an INSERT; returns the new row's id."""

    def same(self, column: str) -> str:
        """SQL that holds when ``column`` equals the next ``?``, None equal to None."""

    def begin(self) -> None:
        """Open a write transaction holding the write lock now: a read then a write cannot be overtaken."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class Engine(Protocol):
    """A database: connections, search, and what a copy leaves to fix."""

    name: str
    where: str  # the database as logs show it: no password

    def connect(self) -> AbstractContextManager[Connection]:
        """A connection within the database timeout, else DatabaseUnavailable; other faults StoreError."""

    def search(self, db: Connection, words: list[str], owner: int | None, limit: int) -> list[dict]:
        """The sessions of ``owner`` whose ended messages hold every word, best first, with a snippet."""

    def after_copy(self, db: Connection) -> None:
        """Make the rows a copy wrote with their own ids safe to add to."""

    def close(self) -> None: ...


class Database(Protocol):
    """What a piece of the store reads and writes through: an engine, or the store that holds one."""

    def connect(self) -> AbstractContextManager[Connection]: ...


# {id}: an identity key; {ref}: a column pointing at one; {real}: a double (timestamps); {blob}: bytes
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
CREATE TABLE IF NOT EXISTS images (
    digest TEXT PRIMARY KEY,  -- SHA-256 of the bytes: an image sent again is stored once
    mime TEXT NOT NULL,
    data {blob} NOT NULL,
    created_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS message_images (  -- which prompt holds which image: whose it is to see
    message_id {ref} NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    digest TEXT NOT NULL REFERENCES images(digest),
    PRIMARY KEY (message_id, digest)
);
CREATE INDEX IF NOT EXISTS message_images_digest ON message_images(digest);
"""

# the tables in an order that satisfies their references (a copy writes them in it)
TABLES = ("users", "tokens", "sessions", "messages", "images", "message_images")


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def shown(database: str) -> str:
    """The database as logs and messages show it: a URL's password is not."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", database)


def open_engine(database: str, *, pool_size: int = 8, timeout_s: float = 5.0) -> Engine:
    """The engine for ``database``: a postgresql:// URL, else a SQLite file."""
    if is_postgres(database):
        try:
            from .postgres import PostgresEngine  # the scale extra: psycopg is needed only here
        except ImportError:
            raise ConfigError("JARVIS_DATABASE in PostgreSQL needs: pip install jarvis[scale]") from None
        return PostgresEngine(database, pool_size=pool_size, timeout_s=timeout_s)
    from .sqlite import SqliteEngine

    return SqliteEngine(database, timeout_s=timeout_s)


def like(word: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') that finds ``word`` anywhere, its own % and _ taken literally."""
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
