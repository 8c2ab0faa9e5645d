"""Background health probes: ask a model server every few seconds, serve the last answer.

A model server that accepts connections and never answers holds a probe for
its full timeout. Probing on the request thread would let a burst of
``/healthz`` requests take every control thread for seconds, and a Stop would
wait behind them. So one thread per probed thing asks, and readers get the
cached answer at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .. import log

FIRST_WAIT_S = 0.5  # start() waits this long for a first answer, so a fresh app reports real state
DOWN_INTERVAL_S = 1.0  # longest pause between probes of a server that did not answer


class Prober:
    """Calls ``check()`` every ``interval_s`` seconds in its own thread and keeps the last answer."""

    def __init__(
        self,
        check: Callable[[], dict],
        interval_s: float,
        name: str = "upstream",
        failures: Callable[[], float] | None = None,
    ):
        self._check = check
        # a count of prompts that could not reach the server: one newer than the last probe
        # makes its answer stale, so /healthz says "down" at once and a probe runs now
        self._failures = failures or (lambda: 0.0)
        self._mark = 0.0
        self.interval_s = interval_s
        self.name = name
        self._lock = threading.Lock()
        self._latest: dict = {"ok": False, "state": "unknown"}
        self._at = 0.0  # monotonic time the latest answer was asked for; 0: never
        self._answered = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # daemon only so that a probe stuck in a hung server's read cannot hold the process
        # past its shutdown deadline; close() joins it, and the probe's own timeout ends it
        self._thread = threading.Thread(target=self._run, name=f"jarvis-probe-{name}", daemon=True)

    def start(self, first_wait_s: float = FIRST_WAIT_S) -> Prober:
        """Start probing; wait up to ``first_wait_s`` for the first answer."""
        self._thread.start()
        self.wait_first(first_wait_s)
        return self

    def wait_first(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first answer; True once there is one."""
        return self._answered.wait(max(0.0, timeout))

    def latest(self) -> tuple[dict, float]:
        """The last answer and the monotonic time its probe began (0.0 before any)."""
        with self._lock:
            answer, at, mark = self._latest, self._at, self._mark
        if answer.get("ok") and self._failures() > mark:
            self.poke()
            error = {"code": "upstream_unavailable", "message": "a prompt could not reach it; probing again"}
            return {**answer, "ok": False, "error": error}, at
        return answer, at

    def poke(self) -> None:
        """Probe again now instead of at the next interval (a failure was just seen)."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the thread to end after its current probe, without waiting."""
        self._stop.set()
        self._wake.set()

    def close(self, timeout: float) -> bool:
        """Stop probing and wait up to ``timeout`` seconds; True when the thread has ended."""
        self.stop()
        if self._thread.ident is None:
            return True
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            log.event("probe_left", logging.WARNING, probe=self.name)
            return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            mark = self._failures()
            try:
                answer = self._check()
            except Exception as e:  # a bug in a check must not end the probing; it is logged
                log.log.exception("health probe %s crashed", self.name)
                answer = {"ok": False, "error": {"code": "internal_error", "message": type(e).__name__}}
            with self._lock:
                self._latest, self._at, self._mark = answer, began, mark
            self._answered.set()
            # a server that is down is asked again sooner: its return is news worth having early
            self._wake.wait(self.interval_s if answer.get("ok") else min(self.interval_s, DOWN_INTERVAL_S))
            self._wake.clear()
