"""Copy a whole history (accounts, tokens, sessions, messages, images) from one database to another.

Used to move a SQLite install to PostgreSQL: ids are kept, so parent ids, leaves,
owners and tokens stay right, and sign-in cookies and tokens stay valid. One
transaction on the target: a copy that fails leaves it as it was.
"""

from __future__ import annotations

from ..errors import BadRequest
from .history import Store

COLUMNS = {
    "users": ("id", "name", "password_hash", "created_at", "generation"),
    "tokens": ("id", "user_id", "name", "token_hash", "created_at"),
    "sessions": ("id", "owner", "title", "created_at", "updated_at", "leaf_id", "settings"),
    "messages": (
        "id", "session_id", "parent_id", "role", "content", "status", "trace_id", "model", "error", "meta",
        "created_at", "updated_at",
    ),
    "images": ("digest", "mime", "data", "created_at"),
    "message_images": ("message_id", "digest"),
}  # fmt: skip
BATCH_ROWS = 500


def copy(source: Store, target: Store, *, replace: bool = False) -> dict[str, int]:
    """Copy every row of ``source`` into ``target``; returns the rows copied per table.

    Refuses (BadRequest) a target that holds anything, unless ``replace``: then it is emptied first."""
    copied = dict.fromkeys(COLUMNS, 0)
    with source.connect() as src, target.connect() as dst:
        dst.begin()
        held = [t for t in COLUMNS if dst.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]
        if held and not replace:
            dst.rollback()
            raise BadRequest(f"the target already holds {', '.join(held)}; pass --replace to empty it first")
        for table in reversed(COLUMNS):  # messages before the sessions they belong to
            dst.execute(f"DELETE FROM {table}")
        for table, columns in COLUMNS.items():
            names = ", ".join(columns)
            insert = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
            rows = src.execute(f"SELECT {names} FROM {table} ORDER BY {columns[0]}")
            while batch := rows.fetchmany(BATCH_ROWS):
                dst.executemany(insert, [tuple(r[c] for c in columns) for r in batch])
                copied[table] += len(batch)
        target.engine.after_copy(dst)
        dst.commit()
    return copied
