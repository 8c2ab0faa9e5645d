"""Accounts and API tokens, in the history database (SQLite or PostgreSQL).

Passwords are kept only as werkzeug's salted scrypt hashes. A token is shown
once; the database keeps its SHA-256, which is enough for a random 256-bit
secret and lets a request find its token by an indexed lookup. The final
comparison is constant-time.

Each user has a cookie generation: a sign-in cookie names it, and bumping it
(sign-out, new password) ends every cookie of that user at once. A live answer
carries the credential that started it (``token:<id>`` or
``cookie:<uid>:<generation>``); ``RevocationWatch`` ends the answers whose
credential is gone, whichever process revoked it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from functools import cache

from werkzeug.security import check_password_hash, generate_password_hash

from .. import log
from ..errors import BadRequest, NotFound, StoreError
from ..store import Store
from ..store.images import forget_unheld

TOKEN_PREFIX = "jv_"
MIN_PASSWORD_CHARS = 8


@dataclass(frozen=True)
class User:
    id: int
    name: str
    generation: int = 0


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
            db.begin()
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                db.rollback()
                raise BadRequest(f"user {name!r} exists already")
            first = db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is None
            uid = db.insert(
                "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)",
                (name, generate_password_hash(password), time.time()),
            )
            if first:
                db.execute("UPDATE sessions SET owner = ? WHERE owner IS NULL", (uid,))
            db.commit()
        return User(uid, name)

    def list(self) -> list[dict]:
        return self._rows(
            "SELECT u.name, u.created_at,"
            " (SELECT COUNT(*) FROM tokens t WHERE t.user_id = u.id) AS tokens"
            " FROM users u ORDER BY u.name"
        )

    def remove(self, name: str) -> None:
        """Delete the account with its tokens and sessions (its cookies and answers end with it)."""
        with self.store.connect() as db:
            _found(db.execute("DELETE FROM users WHERE name = ?", (name,)), f"no user {name!r}")
            forget_unheld(db)  # the images only its chats held go with them

    def set_password(self, name: str, password: str) -> None:
        """Change the password and end every sign-in cookie of the user."""
        _check_password(password)
        with self.store.connect() as db:
            changed = db.execute(
                "UPDATE users SET password_hash = ?, generation = generation + 1 WHERE name = ?",
                (generate_password_hash(password), name),
            )
            _found(changed, f"no user {name!r}")

    def authenticate(self, name: str, password: str) -> User | None:
        with self.store.connect() as db:
            row = db.execute(
                "SELECT id, name, password_hash, generation FROM users WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            check_password_hash(_dummy_hash(), password)  # same work whether or not the name exists
            return None
        if not check_password_hash(row["password_hash"], password):
            return None
        return User(row["id"], row["name"], row["generation"])

    def user(self, user_id: int, generation: int | None = None) -> User | None:
        """The user, if it exists (and, given ``generation``, its cookies have not been ended)."""
        with self.store.connect() as db:
            row = db.execute("SELECT id, name, generation FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None or (generation is not None and row["generation"] != generation):
            return None
        return User(row["id"], row["name"], row["generation"])

    def end_cookies(self, user_id: int) -> None:
        """Make every sign-in cookie of the user invalid."""
        with self.store.connect() as db:
            db.execute("UPDATE users SET generation = generation + 1 WHERE id = ?", (user_id,))

    def revoked(self, credentials: set[str]) -> set[str]:
        """Those of ``credentials`` (``token:<id>``, ``cookie:<uid>:<gen>``) that are no longer valid."""
        tokens = {c for c in credentials if c.startswith("token:")}
        cookies = {c for c in credentials if c.startswith("cookie:")}
        valid: set[str] = set()
        with self.store.connect() as db:
            if tokens:
                ids = [int(c.split(":")[1]) for c in tokens]
                rows = db.execute(f"SELECT id FROM tokens WHERE id IN ({','.join('?' * len(ids))})", ids)
                valid |= {f"token:{r['id']}" for r in rows}
            if cookies:
                uids = [int(c.split(":")[1]) for c in cookies]
                rows = db.execute(
                    f"SELECT id, generation FROM users WHERE id IN ({','.join('?' * len(uids))})", uids
                )
                valid |= {f"cookie:{r['id']}:{r['generation']}" for r in rows}
        return (tokens | cookies) - valid

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
        return self._rows(
            "SELECT t.id, t.name, u.name AS user, t.created_at"
            " FROM tokens t JOIN users u ON u.id = t.user_id ORDER BY t.id"
        )

    def revoke(self, token_id: int) -> None:
        with self.store.connect() as db:
            _found(db.execute("DELETE FROM tokens WHERE id = ?", (token_id,)), f"no token {token_id}")

    def user_for_token(self, token: str) -> tuple[User, int] | tuple[None, None]:
        """The token's user and the token's id, or (None, None)."""
        digest = _digest(token)
        with self.store.connect() as db:
            row = db.execute(
                "SELECT u.id, u.name, u.generation, t.id AS token_id, t.token_hash"
                " FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?",
                (digest,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            return None, None
        return User(row["id"], row["name"], row["generation"]), row["token_id"]

    def _rows(self, sql: str) -> list[dict]:
        with self.store.connect() as db:
            return [dict(r) for r in db.execute(sql).fetchall()]


class RevocationWatch:
    """Ends live answers whose credential was revoked, by this process or another one.

    A thread runs only while an answer with a credential is live; it asks the
    database about those credentials once per ``interval_s``, so no request
    pays for it. ``close`` stops and joins it (bounded).
    """

    def __init__(self, accounts: Accounts, registry, interval_s: float = 0.5):
        self.accounts = accounts
        self.registry = registry
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def watch(self) -> None:
        """Make sure the thread runs; call after registering a stream that has a credential."""
        with self._lock:
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name="jarvis-revocation-watch")
                self._thread.start()

    def check(self) -> int:
        """Cancel the live answers whose credential is revoked; returns how many."""
        live = {s.credential for s in self.registry.live() if s.credential}
        if not live:
            return 0
        revoked = self.accounts.revoked(live)
        if not revoked:
            return 0
        ended = self.registry.cancel_where(lambda s: s.credential in revoked, "revoked")
        log.event("streams_revoked", count=ended)
        return ended

    def close(self, timeout: float = 2.0) -> None:
        self._closed.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._closed.wait(self.interval_s):
                try:
                    self.check()
                except StoreError as e:  # a busy or broken database: try again at the next turn
                    log.event("revocation_check_failed", logging.WARNING, error=e.message)
                with self._lock:
                    if not any(s.credential for s in self.registry.live()):
                        self._thread = None
                        return
        finally:
            with self._lock:  # however it ends, the next watch() starts a new thread
                if self._thread is threading.current_thread():
                    self._thread = None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _found(changed, missing: str) -> None:
    """A write that touched no row named something that does not exist."""
    if changed.rowcount == 0:
        raise NotFound(missing)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise BadRequest(f"a password needs at least {MIN_PASSWORD_CHARS} characters")


@cache
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))
