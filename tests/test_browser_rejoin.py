"""Rejoining live answers in the page: a reload within the grace, a second tab, a broken link."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests import test_browser
from tests.conftest import wait_for

browser, tab = test_browser.browser, test_browser.tab  # the browser tests' fixtures
expect, words, Tab = test_browser.expect, test_browser.words, test_browser.Tab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # a real Chromium

TOKENS = words("r", 60)
FULL = "".join(TOKENS).strip()


@pytest.fixture
def jarvis_settings() -> dict[str, str]:
    """The real app, with a detach grace."""
    return {"JARVIS_DETACH_GRACE": "10"}


def test_a_reload_mid_answer_rejoins_it_and_it_finishes_in_full(tab, jarvis_server):
    # without the grace and the attach, the reload ends the answer as "Disconnected"
    jarvis_server.fake.script(tokens=TOKENS, interval_s=0.05)
    tab.open()
    tab.send("Count slowly")
    expect(tab.answer().locator(".msg-content")).to_contain_text("r3")
    attached = []
    tab.page.on("request", lambda r: r.url.endswith("/stream") and attached.append(r.url))
    tab.page.reload()
    expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
    answer = tab.answer()
    expect(answer).to_have_attribute("data-status", "streaming")  # live again, not a stored snapshot
    expect(answer).to_have_attribute("data-status", "completed")
    expect(answer.locator(".msg-content")).to_have_text(FULL)
    assert jarvis_server.fake.chat_calls()[0].closed_by != "client"  # the answer never stopped
    assert len(attached) == 1  # read live through the attach, not pieced together from saves


def test_a_second_tab_shows_the_live_answer_and_can_stop_it(tab, jarvis_server, browser):
    jarvis_server.fake.script(tokens=words("t", 400), interval_s=0.03)
    tab.open()
    tab.send("Talk for a while")
    expect(tab.answer().locator(".msg-content")).to_contain_text("t2")
    page = tab.page.context.new_page()
    attached = []
    page.on("request", lambda r: r.url.endswith("/stream") and attached.append(r.url))
    second = Tab(page, tab.base_url).open(tab.page.url[len(tab.base_url) + 1 :])
    answer = second.answer()
    expect(answer).to_have_attribute("data-status", "streaming")
    expect(answer.locator(".msg-content")).to_contain_text("t0 t1 t2")  # from its start, no gap
    seen = len(answer.locator(".msg-content").inner_text())
    wait_for(lambda: len(answer.locator(".msg-content").inner_text()) > seen, what="live tokens in the tab")
    second.page.get_by_role("button", name="Stop the answer").click()
    for page in (tab, second):
        expect(page.answer()).to_have_attribute("data-status", "stopped")
    first_text = tab.answer().locator(".msg-content").inner_text()
    expect(second.answer().locator(".msg-content")).to_have_text(first_text)  # token for token
    assert second.errors == [] and second.csp_violations() == []
    assert len(attached) == 1


class Breaker:
    """A TCP relay in front of Jarvis that breaks answer streams mid-answer, both ways, as a
    network does: the n-th event-stream response it carries is cut after cuts[n] token events,
    and those after the last cut pass whole."""

    MARK, SSE = b"event: token", b"\r\nContent-Type: text/event-stream"

    def __init__(self, port: int, cuts: list[int]):
        self.port, self.cuts, self.cut = port, list(cuts), 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, name="test-breaker")]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()  # ends when close() closes the listener
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
                for args in ((client, server, False), (server, client, True)):
                    t = threading.Thread(target=self._pump, args=args, name="test-breaker-pump")
                    self.threads.append(t)
                    t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        budget, seen, tail = None, 0, b""
        try:
            while data := src.recv(65536):  # ends when either side, or close(), closes
                if budget is not None and seen >= budget:
                    # the browser has had the events before this chunk: now the link breaks
                    with self.lock:
                        self.cut += 1
                    break
                if answers:
                    window = tail + data
                    tail = window[1 - len(self.MARK) :]  # too short to hold a mark counted twice
                    seen += window.count(self.MARK)
                    with self.lock:
                        if budget is None and self.SSE in window and self.cuts:
                            budget = self.cuts.pop(0)
                dst.sendall(data)
        except OSError:
            pass  # the other pump, or close(), closed the sockets
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)  # both ways: the browser and Jarvis both see it go
            except OSError:
                pass  # already gone

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept: closing alone does not
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone
                s.close()
        for t in self.threads:
            t.join(5)


@pytest.fixture
def breaker(jarvis_server):
    made: list[Breaker] = []

    def make(cuts: list[int]) -> Breaker:
        made.append(Breaker(int(jarvis_server.url.rsplit(":", 1)[1]), cuts))
        return made[-1]

    yield make
    for b in made:
        b.close()


def test_an_answer_whose_connection_breaks_twice_resumes_each_time_and_finishes_in_full(
    tab, jarvis_server, breaker
):
    # the page resumed a broken answer once: the second break left it "Disconnected", half written
    jarvis_server.fake.script(tokens=TOKENS, interval_s=0.05)
    relay = breaker([5, 5])  # the prompt's stream, then the first resume, each cut after 5 tokens
    tab.base_url = relay.url
    resumed = []
    tab.page.on(
        "request", lambda r: r.url.endswith("/stream") and resumed.append(r.headers.get("last-event-id"))
    )
    tab.open()
    answer = tab.ask("Count slowly", timeout=15000)
    expect(answer.locator(".msg-content")).to_have_text(FULL)
    assert relay.cut == 2
    assert len(resumed) == 2 and all(resumed), resumed  # each resume said where it broke off
    # never from an earlier event; the same one when the second cut came before a whole new event
    # reached the page (the relay counts an event's first line, the page a whole event)
    first, second = (int(i.rsplit(".", 1)[1]) for i in resumed)
    assert second >= first, resumed
    call = jarvis_server.fake.chat_calls()
    assert len(call) == 1 and call[0].closed_by != "client"  # one answer, never restarted or stopped


def test_a_resume_the_server_turns_away_is_tried_again_waiting_twice_as_long_each_time(
    tab, jarvis_server, breaker
):
    # the page resumed once: a busy server's 503 left the answer "Disconnected", half written
    tokens = words("b", 120)  # 6 s of answer: time for three refusals (0.25 + 0.5 + 1 + 2 s)
    jarvis_server.fake.script(tokens=tokens, interval_s=0.05)
    tab.base_url = breaker([5]).url
    tries: list[float] = []

    def busy(route) -> None:
        tries.append(time.monotonic())  # when the page asked (or later: never earlier)
        if len(tries) > 3:
            route.fallback()
            return
        busy = {"error": {"code": "at_capacity", "message": "every answer slot is in use"}}
        route.fulfill(status=503, json=busy)

    tab.page.route("**/stream", busy)
    tab.open()
    answer = tab.ask("Count slowly", timeout=20000)
    expect(answer.locator(".msg-content")).to_have_text("".join(tokens).strip())
    assert len(tries) == 4
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.9, gaps  # 0.5 s, then 1 s: doubling from 0.25 s
