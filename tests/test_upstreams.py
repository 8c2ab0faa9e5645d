"""The upstream readers against their fakes, without the app: framing, errors, settings.

Each fake is a real HTTP server on loopback; "arrived" means the reader
yielded it while the fake was still holding the rest of the answer back.
"""

from __future__ import annotations

import queue
import threading

import pytest

from jarvis.cancel import CancelScope
from jarvis.config import Config
from jarvis.upstream import Done
from jarvis.upstream.ollama import OllamaUpstream
from tests.fake_ollama import FakeOllama, Script

FRAMINGS = ["chunked", "length", "close"]


@pytest.fixture
def upstream(fake):
    return OllamaUpstream(Config(ollama_url=fake.url, model="tiny", idle_timeout_s=10.0))


class Reader:
    """Reads one answer in a thread, so a test can watch items arrive while the fake holds back."""

    def __init__(self, upstream, prompt: str = "hi", **kw):
        self.cancel = CancelScope()
        self.items: queue.Queue = queue.Queue()
        self.error: Exception | None = None
        messages = [{"role": "user", "content": prompt}]
        self._gen = upstream.stream_chat(messages, "tiny", self.cancel, **kw)
        self._thread = threading.Thread(target=self._run, name="reader")
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._gen:
                self.items.put(item)
        except Exception as e:  # handed to the test, which asserts on it
            self.error = e
        finally:
            self.items.put(None)

    def take(self, n: int, timeout: float = 2.0) -> list:
        return [self.items.get(timeout=timeout) for _ in range(n)]

    def rest(self, timeout: float = 5.0) -> list:
        out = []
        while (item := self.items.get(timeout=timeout)) is not None:
            out.append(item)
        return out

    def close(self) -> None:
        self.cancel.cancel("stopped")
        self._thread.join(5)
        assert not self._thread.is_alive()


@pytest.mark.parametrize("framing", FRAMINGS)
def test_tokens_arrive_as_they_are_sent_in_every_framing(fake: FakeOllama, upstream, framing):
    # with reads that fill 64 KiB, nothing arrives while the fake holds the rest back
    fake.script(Script(tokens=6, stall_after=2, framing=framing))
    reader = Reader(upstream)
    try:
        assert reader.take(2) == ["tok0 ", "tok1 "]
        assert fake.wait_for_calls(1)[0].tokens_sent == 2  # the fake is stalled: nothing more was sent
    finally:
        reader.close()


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_complete_answer_ends_done_in_every_framing(fake: FakeOllama, upstream, framing):
    fake.script(Script(tokens=3, interval_s=0.01, framing=framing))
    reader = Reader(upstream)
    try:
        items = reader.rest()
        assert reader.error is None, reader.error
        assert items == ["tok0 ", "tok1 ", "tok2 ", Done("stop", 7, 3)]
    finally:
        reader.close()
