"""A reload that lands on another process rejoins the live answer in the page (two apps, one Redis)."""

from __future__ import annotations

import pytest

from tests import test_browser
from tests.conftest import LOCAL_TOKEN, Api, wait_for
from tests.redis_server import REDIS_SERVER
from tests.test_scale import LEASE_TTL_S, health, redis_server  # noqa: F401

pytest.importorskip("redis", reason="the redis client is not installed (pip install jarvis[scale])")
browser = test_browser.browser  # the browser tests' fixture
expect, words, Tab = test_browser.expect, test_browser.words, test_browser.Tab
WATCH_CSP = test_browser.WATCH_CSP

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(60),  # a real Chromium
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

TOKENS = words("r", 60)
FULL = "".join(TOKENS).strip()


def test_a_reload_on_another_process_rejoins_the_answer_and_it_finishes(
    browser,
    make_app,
    make_server,
    redis_server,  # noqa: F811
    fake,
):
    # without the remote attach the page at B would get 204, and A's grace (1 s of a 3 s answer)
    # would run out and end the answer as disconnected
    shared = {"redis_url": redis_server.url, "lease_ttl_s": LEASE_TTL_S, "detach_grace_s": 1.0}
    urls = [make_server(make_app(secret_key="s" * 32, **shared)).url for _ in "ab"]
    for url in urls:
        wait_for(lambda url=url: health(Api(url)).get("coordination_ok"), what="subscribed")
    fake.script(tokens=TOKENS, interval_s=0.05)
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(10000)
    context.add_init_script(WATCH_CSP)
    try:
        assert context.request.get(f"{urls[0]}/?token={LOCAL_TOKEN}").ok  # the cookie serves both
        tab = Tab(context.new_page(), urls[0]).open()
        tab.send("Count slowly")
        expect(tab.answer().locator(".msg-content")).to_contain_text("r3")
        fragment = tab.page.url[len(urls[0]) + 1 :]
        attached = []
        tab.page.on("request", lambda r: r.url.endswith("/stream") and attached.append(r.url))
        tab.base_url = urls[1]
        tab.open(fragment)  # the reload, landing on B
        answer = tab.answer()
        expect(answer).to_have_attribute("data-status", "streaming")  # live again, from A through Redis
        expect(answer).to_have_attribute("data-status", "completed")
        expect(answer.locator(".msg-content")).to_have_text(FULL)
        assert fake.chat_calls()[0].closed_by != "client"  # the answer never stopped
        assert [u.startswith(urls[1]) for u in attached] == [True]
        assert tab.errors == [] and tab.csp_violations() == []
    finally:
        context.close()
