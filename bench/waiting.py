"""Section 10: cancelling a stream that still waits for its predecessor, in process.

Over HTTP a predecessor ends within milliseconds of its cancel (its socket is
shut down), so the wait is too short to hit. Here the predecessor's upstream
winds down for WIND_DOWN_S after its cancel, like a model finishing a step,
and the stream that superseded it is stopped, abandoned or shut down while it
waits; the time is from the cancel to the waiting stream's end event.
"""

from __future__ import annotations

import tempfile
import threading
import time

from jarvis.config import Config
from jarvis.conversation import Chat
from jarvis.lifecycle.registry import Registry
from jarvis.lifecycle.stream import Stream
from jarvis.status import Reason
from jarvis.store import Store

from .stats import Cell, Row, Section, judge

WIND_DOWN_S = 0.5
LIMIT_MS = 10.0


class _SlowToStop:
    """Streams until cancelled, then takes WIND_DOWN_S to let go."""

    name, default_model = "slow", "slow"

    def __init__(self) -> None:
        self.calls = threading.Semaphore(0)

    def stream_chat(self, chat, cancel, session=None):
        self.calls.release()
        yield "a"
        cancel.wait(30)
        threading.Event().wait(WIND_DOWN_S)


def _trial(folder: str, i: int, how: str) -> float:
    cfg = Config(
        database=f"{folder}/w{i}.sqlite3", heartbeat_s=5.0, supersede_timeout_s=5.0, cancel_timeout_s=2.0
    )
    store, registry, upstream = Store(cfg.database), Registry(4), _SlowToStop()
    sid = store.create_session()["id"]
    streams = []
    for trace in ("a", "b"):
        stream = Stream(
            session_id=sid, trace_id=f"{trace}{i}", chat=Chat("slow", []), upstream=upstream,
            store=store, config=cfg, release=registry.release,
        )  # fmt: skip
        stream.user_message_id, stream.message_id = store.add_exchange(sid, trace, trace, "slow")
        stream.start(registry.register(stream))
        streams.append(stream)
        if trace == "a" and not upstream.calls.acquire(timeout=5):
            raise TimeoutError("the first stream never called its upstream")
    first, waiting = streams
    body = iter(waiting)
    next(body)  # start
    began = time.monotonic()
    if how == "shutdown":
        stopper = threading.Thread(target=registry.shutdown, args=(5.0,), name="bench-shutdown")
        stopper.start()
    else:
        waiting.cancel(Reason(how))
    for frame in body:
        if b"event: end\n" in frame:
            took = (time.monotonic() - began) * 1000
    first.close()
    waiting.close()
    if how == "shutdown":
        stopper.join(10)
    store.close()
    return took


def run(n: int) -> Section:
    """Rows: stop, disconnect and shutdown of a waiting stream, timed to its end event."""
    section = Section("10", "Cancel while waiting for the predecessor (in process)")
    with tempfile.TemporaryDirectory() as folder:
        for how, what in (("stopped", "stop"), ("disconnected", "disconnect"), ("shutdown", "shutdown")):
            cell = Cell.of([_trial(folder, i, how) for i in range(n)])
            section.rows.append(
                Row(
                    section.title,
                    f"{what} of a waiting stream → end event",
                    "ms",
                    {"Jarvis": cell},
                    target=f"p99 ≤ {LIMIT_MS:g} ms",
                    holds=judge(cell, LIMIT_MS),
                    note=f"predecessor winds down {WIND_DOWN_S * 1000:g} ms after its cancel",
                )
            )
    return section
