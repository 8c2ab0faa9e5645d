"""Accounts and API tokens, in the history database.

Passwords are kept only as werkzeug's salted scrypt hashes. A token is shown
once; the database keeps its SHA-256, which is enough for a random 256-bit
secret and lets a request find its token by an indexed lookup. The final
comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from functools import cache

from werkzeug.security import check_password_hash, generate_password_hash

from .errors import BadRequest, NotFound
from .history import Store

TOKEN_PREFIX = "jv_"
MIN_PASSWORD_CHARS = 8


@dataclass(frozen=True)
class User:
    id: int
    name: str


class Accounts:
    """Users, their passwords and their tokens."""

    def __init__(self, store: Store):
        self.store = store

    def exist(self) -> bool:
        with self.store.connect() as db:
            return db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def add(self, name: str, password: str) -> User:
        """Create an account; the first one also adopts the sessions made before accounts existed."""
        name = name.strip()
        if not name or len(name) > 64 or any(c.isspace() for c in name):
            raise BadRequest("a user name is 1 to 64 characters without spaces")
        _check_password(password)
        with self.store.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                db.execute("ROLLBACK")
                raise BadRequest(f"user {name!r} exists already")
            first = db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is None
            uid = db.execute(
                "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)",
                (name, generate_password_hash(password), time.time()),
            ).lastrowid
            if first:
                db.execute("UPDATE sessions SET owner = ? WHERE owner IS NULL", (uid,))
            db.execute("COMMIT")
        return User(uid, name)

    def list(self) -> list[dict]:
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT u.name, u.created_at,"
                " (SELECT COUNT(*) FROM tokens t WHERE t.user_id = u.id) AS tokens"
                " FROM users u ORDER BY u.name"
            ).fetchall()
        return [dict(r) for r in rows]

    def remove(self, name: str) -> None:
        """Delete the account with its tokens and sessions."""
        with self.store.connect() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no user {name!r}")

    def set_password(self, name: str, password: str) -> None:
        _check_password(password)
        with self.store.connect() as db:
            changed = db.execute(
                "UPDATE users SET password_hash = ? WHERE name = ?", (generate_password_hash(password), name)
            )
            if changed.rowcount == 0:
                raise NotFound(f"no user {name!r}")

    def authenticate(self, name: str, password: str) -> User | None:
        with self.store.connect() as db:
            row = db.execute("SELECT id, name, password_hash FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            check_password_hash(_dummy_hash(), password)  # same work whether or not the name exists
            return None
        return User(row["id"], row["name"]) if check_password_hash(row["password_hash"], password) else None

    def user(self, user_id: int) -> User | None:
        with self.store.connect() as db:
            row = db.execute("SELECT id, name FROM users WHERE id = ?", (user_id,)).fetchone()
        return User(row["id"], row["name"]) if row else None

    def create_token(self, user_name: str, name: str = "") -> str:
        """Create a token for ``user_name`` and return it; only its hash is kept."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.store.connect() as db:
            row = db.execute("SELECT id FROM users WHERE name = ?", (user_name,)).fetchone()
            if row is None:
                raise NotFound(f"no user {user_name!r}")
            db.execute(
                "INSERT INTO tokens (user_id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
                (row["id"], name, _digest(token), time.time()),
            )
        return token

    def tokens(self) -> list[dict]:
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT t.id, t.name, u.name AS user, t.created_at"
                " FROM tokens t JOIN users u ON u.id = t.user_id ORDER BY t.id"
            ).fetchall()
        return [dict(r) for r in rows]

    def revoke(self, token_id: int) -> None:
        with self.store.connect() as db:
            if db.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount == 0:
                raise NotFound(f"no token {token_id}")

    def user_for_token(self, token: str) -> User | None:
        digest = _digest(token)
        with self.store.connect() as db:
            row = db.execute(
                "SELECT u.id, u.name, t.token_hash FROM tokens t JOIN users u ON u.id = t.user_id"
                " WHERE t.token_hash = ?",
                (digest,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            return None
        return User(row["id"], row["name"])


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise BadRequest(f"a password needs at least {MIN_PASSWORD_CHARS} characters")


@cache
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))
