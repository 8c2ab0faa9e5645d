"""The one event loop the MCP SDK runs in, on a thread Jarvis owns and joins.

The SDK is async (anyio); Jarvis's answers run on plain threads. Every server connection lives
in this loop; a worker thread hands it a coroutine and waits on the returned future with a
deadline, so nothing a server does can block the thread that asked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine

log = logging.getLogger("jarvis.tools")


class LoopThread:
    """An asyncio loop on its own named thread; ``close`` stops it and joins the thread."""

    def __init__(self, name: str = "jarvis-tools") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        """Run ``coro`` in the loop; the caller waits on the future with a timeout."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` in the loop thread; a no-op once the loop has stopped."""
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: nothing left to cancel
            log.debug("tool loop already closed")

    def stop(self, timeout_s: float) -> bool:
        """Stop the loop after its current callbacks and join the thread; True if it ended in time."""
        self.soon(self.loop.stop)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
