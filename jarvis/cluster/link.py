"""One process's connection to Redis, shared by the leases, the channel, the slots and the mirror.

Every call has a socket timeout, and a process holds at most a bounded pool of connections (a
call waits for a free one no longer than the timeout); a lost or slow Redis becomes
``CoordinationUnavailable``, remembered in ``error`` until a call succeeds again. ``subscribed``
says whether the listener hears the control channel: without it a new prompt is refused at once.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..config import ConfigError
from ..errors import CoordinationUnavailable

T = TypeVar("T")


class Link:
    """Two bounded pools to one Redis (calls, and the mirror's ``XREAD BLOCK``) and their state."""

    def __init__(self, url: str, timeout_s: float, max_connections: int):
        """``max_connections`` bounds each of the two pools (the threads that may call at once)."""
        try:
            import redis  # the scale extra: only a process with JARVIS_REDIS_URL imports it
        except ImportError:
            raise ConfigError("JARVIS_REDIS_URL needs the redis client: pip install jarvis[scale]") from None

        self.errors: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)

        def client(socket_timeout: float) -> redis.Redis:
            # a blocking pool: a call waits for a free connection (as long as a reply may take)
            # instead of opening one more; past that it fails as an unreachable Redis would
            try:
                pool = redis.BlockingConnectionPool.from_url(
                    url, max_connections=max_connections, timeout=timeout_s, socket_timeout=socket_timeout,
                    socket_connect_timeout=timeout_s, decode_responses=True,
                )  # fmt: skip
            except ValueError as e:  # the message names the part, never the password
                raise ConfigError(f"JARVIS_REDIS_URL is not a Redis URL: {e}") from None
            return redis.Redis(connection_pool=pool)

        self.redis = client(timeout_s)
        self.blocking = client(timeout_s + 1.0)  # for XREAD BLOCK: waits out the block, and no longer
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.subscribed = threading.Event()  # the listener hears the channel
        self.closing = threading.Event()  # the process shuts down: threads end, remote readers leave
        self.error: str | None = None  # the last failure, while it lasts

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One Redis call; a lost or slow Redis becomes CoordinationUnavailable."""
        try:
            result = fn(*args, **kwargs)
        except self.errors as e:
            self.error = f"{type(e).__name__}: {e}"
            raise CoordinationUnavailable(f"Redis cannot be reached: {e}") from e
        self.error = None
        return result

    def require(self) -> None:
        """Raise CoordinationUnavailable at once while the control channel is not heard."""
        if not self.subscribed.is_set():
            raise CoordinationUnavailable(f"Redis cannot be reached: {self.error or 'not connected yet'}")

    def ours(self, value: str | None) -> bool:
        """Whether a lease or owner value ("process trace ticket") names this process."""
        return value is not None and value.startswith(self.process_id + " ")

    def health(self) -> dict:
        return {"ok": self.subscribed.is_set() and self.error is None, "error": self.error}

    def close(self) -> None:
        """Close both pools (after the threads that use them have ended)."""
        self.redis.close()
        self.blocking.close()
