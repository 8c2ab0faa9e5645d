"""Jarvis under a sub-path: the nginx block of docs/deployment.md in front, Chromium through it."""

from __future__ import annotations

import pytest

from tests import test_browser
from tests.test_proxy import doc_location, nginx  # noqa: F401  (the fixture that runs nginx with a given block)

browser = test_browser.browser  # the browser tests' fixture
expect, words, Tab = test_browser.expect, test_browser.words, test_browser.Tab
NAME, PASSWORD = test_browser.NAME, test_browser.PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # a real Chromium and a real nginx

PREFIX = "/jarvis"


@pytest.fixture
def jarvis_settings() -> dict[str, str]:
    """The real app with nginx on this machine as its trusted proxy."""
    return {"JARVIS_TRUSTED_PROXIES": "127.0.0.1"}


def test_under_a_sub_path_a_person_signs_in_chats_and_stops_an_answer(browser, jarvis_server, nginx):  # noqa: F811
    # before: the sign-in redirect went to /login, outside the prefix, which the proxy does not serve
    jarvis_server.app.extensions["jarvis"].accounts.add(NAME, PASSWORD)
    url = nginx(int(jarvis_server.url.rsplit(":", 1)[1]), doc_location("### Under a sub-path")) + PREFIX
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(10000)
    context.add_init_script(test_browser.WATCH_CSP)
    try:
        page = context.new_page()
        tab = Tab(page, url)
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        failed: list[str] = []
        page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
        page.goto(url + "/")
        expect(page).to_have_url(url + "/login")
        test_browser.fill_sign_in(page, NAME, PASSWORD)
        expect(page).to_have_url(url + "/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        assert [c["path"] for c in context.cookies()] == [PREFIX]  # not sent to the host's other sites

        jarvis_server.fake.script(tokens=words("p", 400), interval_s=0.03)
        page.get_by_role("button", name="New chat").click()
        tab.send("Talk for a long time")
        answer = tab.answer()
        expect(answer.locator(".msg-content")).to_contain_text("p3")
        expect(answer).to_have_attribute("data-status", "streaming")
        page.get_by_role("button", name="Stop the answer").click()
        expect(answer).to_have_attribute("data-status", "stopped")
        expect(answer.locator(".msg-content")).to_contain_text("p0 p1 p2 p3")
        assert jarvis_server.fake.chat_calls()[0].wait_closed(5), "the upstream call stayed open after Stop"
        expect(page.locator(".session-title")).to_have_text(["Talk for a long time"])

        assert asked and all(u.startswith(url + "/") for u in asked), [u for u in asked if PREFIX not in u]
        assert failed == []
        assert tab.csp_violations() == [] and tab.errors == []
    finally:
        context.close()
