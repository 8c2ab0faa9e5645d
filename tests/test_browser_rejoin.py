"""Rejoining live answers in the page: a reload within the grace, a second tab."""

from __future__ import annotations

import pytest

from tests import test_browser
from tests.conftest import wait_for

browser, tab = test_browser.browser, test_browser.tab  # the browser tests' fixtures
expect, words, Tab = test_browser.expect, test_browser.words, test_browser.Tab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # a real Chromium

TOKENS = words("r", 60)
FULL = "".join(TOKENS).strip()


@pytest.fixture
def detach_grace(monkeypatch):
    monkeypatch.setenv("JARVIS_DETACH_GRACE", "10")


@pytest.fixture
def jarvis_server(detach_grace, jarvis_server):
    """The real app, with a detach grace (the variable is set before the app is built)."""
    return jarvis_server


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
