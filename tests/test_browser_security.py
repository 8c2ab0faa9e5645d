"""The page's side of security in a real Chromium: the printed address, the token form, hostile Markdown."""

from __future__ import annotations

import pytest

from tests import test_browser
from tests.conftest import LOCAL_TOKEN

browser = test_browser.browser  # the browser tests' fixture
Tab, expect = test_browser.Tab, test_browser.expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(40)]


def _tab(browser, url: str) -> Tab:
    context = browser.new_context()
    context.set_default_timeout(10000)
    return Tab(context.new_page(), url)


def test_the_printed_address_signs_in_and_leaves_the_address_bar(browser, jarvis_server):
    tab = _tab(browser, jarvis_server.url)
    try:
        tab.page.goto(f"{jarvis_server.url}/?token={LOCAL_TOKEN}")
        expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
        assert tab.page.url == jarvis_server.url + "/"
        assert LOCAL_TOKEN not in tab.page.evaluate("history.state === null ? location.href : ''")
        assert tab.errors == []
    finally:
        tab.page.context.close()


def test_without_the_token_the_page_asks_for_it(browser, jarvis_server):
    tab = _tab(browser, jarvis_server.url)
    try:
        tab.page.goto(jarvis_server.url + "/")
        expect(tab.page).to_have_url(jarvis_server.url + "/login")
        expect(tab.page.get_by_role("heading", name="No accounts yet")).to_be_visible()
        tab.page.get_by_label("Local token").fill("a wrong guess")
        tab.page.get_by_role("button", name="Open Jarvis").click()
        expect(tab.page).to_have_url(jarvis_server.url + "/login")
        tab.page.get_by_label("Local token").fill(LOCAL_TOKEN)
        tab.page.get_by_role("button", name="Open Jarvis").click()
        expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
        assert tab.page.url == jarvis_server.url + "/"
    finally:
        tab.page.context.close()


def test_an_answer_the_markdown_renderer_cannot_handle_is_shown_as_text(browser, jarvis_server):
    # 3,200 nested quotes overflow marked's stack: without the fallback the conversation stops rendering
    jarvis_server.fake.script(tokens=[">" * 3200])
    tab = _tab(browser, jarvis_server.url)
    try:
        tab.page.goto(f"{jarvis_server.url}/?token={LOCAL_TOKEN}")
        expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
        tab.ask("quote me")
        jarvis_server.fake.script(tokens=["**after**"])
        tab.send("and then?")
        expect(tab.answer().locator("strong")).to_have_text("after")
        tab.page.reload()
        expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
        expect(tab.page.locator(".msg-content.plain-text")).to_have_count(1)
        assert tab.page.locator(".msg-content.plain-text").inner_text().count(">") == 3200
        expect(tab.answer().locator("strong")).to_have_text("after")
        assert tab.errors == []
    finally:
        tab.page.context.close()
