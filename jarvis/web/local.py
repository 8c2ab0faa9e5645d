"""The local token and the secrets of the instance folder: the token that signs this machine in
while no account exists, the local sign-in epoch every local cookie names, and the cookie's
fingerprint of both."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading

from flask import current_app

from .. import log
from ..config import MIN_SECRET_CHARS, Config

LOCAL_ADVICE = (
    "send Authorization: Bearer <local token>, or open the address `jarvis serve` printed "
    "(the token is in the file local_token of the instance folder)"
)


def current_token() -> str:
    return current_app.extensions["jarvis.local_token"]


def is_local_token(token: str) -> bool:
    return hmac.compare_digest(token.encode(), current_token().encode())


def fingerprint(token: str, epoch: str = "") -> str:
    # the cookie is signed, not encrypted: it names the token without holding it
    return hashlib.sha256(
        b"jarvis-local:" + token.encode() + (b":" + epoch.encode() if epoch else b"")
    ).hexdigest()


def epoch() -> LocalEpoch:
    return current_app.extensions["jarvis.local_epoch"]


class LocalEpoch:
    """The local sign-in epoch: a random value in the instance folder that every local cookie names.
    Sign-out draws a new one, which ends every local cookie, copies included, in every process
    on this folder. None drawn yet (never signed out): the empty epoch.

    Read on every local-mode request: one stat, and a read only when the file changed.
    """

    def __init__(self, path: str):
        self.path = path
        self._seen: tuple[tuple[int, int, int], str] | None = None  # (file identity, value), swapped whole

    def current(self) -> str:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ""
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        seen = self._seen
        if seen is not None and seen[0] == key:
            return seen[1]
        with open(self.path) as f:
            value = f.read().strip()
        self._seen = (key, value)
        return value

    def renew(self) -> None:
        """Draw a new epoch: written whole to a new file, then put in place (another inode: seen at once)."""
        tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(16))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def local_token(cfg: Config) -> str:
    """The local token: ``JARVIS_LOCAL_TOKEN``, or the one generated into the instance folder."""
    return cfg.local_token or private_secret(os.path.join(cfg.instance_path(), "local_token"))


def private_secret(path: str) -> str:
    """Read a secret file, or make one: mode 0600, and never seen half-written."""
    try:
        with open(path) as f:
            value = f.read().strip()
        if len(value) >= MIN_SECRET_CHARS:
            return value
        log.event("secret_file_regenerated", logging.WARNING, file=os.path.basename(path), chars=len(value))
    except FileNotFoundError:
        value = None
    made = secrets.token_urlsafe(32)  # 256 random bits
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(made)
            f.flush()
            os.fsync(f.fileno())
        if value is not None:
            os.replace(tmp, path)  # an empty or short file, say from a crash during its first write
            return made
        try:
            os.link(tmp, path)  # appears whole, and only if no other process made it first
        except FileExistsError:
            with open(path) as f:
                return f.read().strip()
        return made
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
