"""Chat settings, answers cut by their length, progress before the first token and the speed
under an answer, in a real Chromium against the real app and the fake model server."""

from __future__ import annotations

import os
import re

import pytest

from jarvis.upstream import local
from tests import test_browser
from tests.conftest import LOCAL_TOKEN, ROOT
from tests.fake_ollama import Script

browser, tab = test_browser.browser, test_browser.tab  # the browser tests' fixtures
expect = test_browser.expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # a real Chromium

DOCS = os.path.join(ROOT, "docs")


def shoot(tab, name: str) -> None:
    """With SCREENSHOTS=1, a picture of the state for docs/ (the test's viewport)."""
    if os.environ.get("SCREENSHOTS") == "1":
        png = tab.page.screenshot()  # bytes: a path would write from an executor thread
        with open(os.path.join(DOCS, name), "wb") as f:
            f.write(png)


def open_settings(page):
    page.locator("#chat-menu summary").click()
    page.locator("#chat-settings").click()
    expect(page.locator("#settings-dialog")).to_be_visible()


def test_chat_settings_are_saved_and_reach_the_upstream_request(tab, jarvis_server):
    fake = jarvis_server.fake
    fake.script(tokens=["Arr, ", "matey."])
    tab.open()
    tab.ask("hello")
    page = tab.page
    open_settings(page)
    expect(page.locator("#settings-system")).to_be_focused()
    page.locator("#settings-system").fill("You are a pirate. Answer in one line.")
    page.locator("#settings-temperature").fill("0.3")
    page.locator("#settings-max-tokens").fill("64")
    shoot(tab, "settings.png")
    page.locator("#settings-save").click()
    expect(page.locator("#settings-dialog")).to_be_hidden()
    chip = page.locator("#settings-chip")  # the chat says it has settings of its own
    expect(chip).to_be_visible()
    expect(chip).to_have_attribute("title", re.compile("system prompt, temperature 0.3, answer length 64"))

    tab.ask("who are you?")
    body = fake.wait_for_calls(2)[1].body
    assert body["messages"][0] == {"role": "system", "content": "You are a pirate. Answer in one line."}
    assert body["options"] == {"temperature": 0.3, "num_predict": 64}

    page.reload()  # stored with the chat: the dialog reads them back
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(chip).to_be_visible()
    page.locator("#new-chat").click()
    expect(chip).to_be_hidden()  # another chat, without settings
    page.locator(".session-open").last.click()
    expect(chip).to_be_visible()
    open_settings(page)
    expect(page.locator("#settings-system")).to_have_value("You are a pirate. Answer in one line.")
    expect(page.locator("#settings-max-tokens")).to_have_value("64")
    page.locator("#settings-reset").click()
    expect(page.locator("#settings-dialog")).to_be_hidden()
    expect(chip).to_be_hidden()
    tab.ask("and now?")
    body = fake.wait_for_calls(3)[2].body
    assert body["messages"][0]["role"] == "user" and "options" not in body


def test_what_is_typed_in_the_dialog_is_not_wiped_by_a_slow_read(tab, jarvis_server):
    # before: the dialog opened empty and filled itself when the chat's read came back, over the typing
    jarvis_server.fake.script(tokens=["Hi"])
    tab.open()
    tab.ask("hello")
    page = tab.page
    reads = {"sent": 0, "done": 0}
    chat = re.compile(r".*/api/sessions/[^/]+$")

    def slow(route):
        if route.request.method == "GET":
            reads["sent"] += 1
            page.wait_for_timeout(800)  # the fake's slow link: the read arrives after the typing
        route.continue_()

    page.on(
        "requestfinished",
        lambda r: chat.match(r.url) and r.method == "GET" and reads.update(done=reads["done"] + 1),
    )
    page.route(chat, slow)
    open_settings(page)
    page.locator("#settings-system").fill("Typed at once.")
    while reads["done"] < reads["sent"]:  # a read still on its way: let it land before saving
        page.wait_for_event("requestfinished", timeout=5000)
    page.evaluate("() => new Promise((done) => requestAnimationFrame(done))")  # the page acts on it
    page.locator("#settings-save").click()
    expect(page.locator("#settings-dialog")).to_be_hidden()
    sid = page.evaluate("decodeURIComponent(location.hash.slice(1))")
    assert jarvis_server.app.extensions["jarvis"].store.settings(sid) == {"system": "Typed at once."}


def test_a_setting_the_server_refuses_is_shown_in_the_dialog(tab, jarvis_server):
    jarvis_server.fake.script(tokens=["Hi"])
    tab.open()
    tab.ask("hello")
    page = tab.page
    open_settings(page)
    page.locator("#settings-system").fill("x" * 8000)
    # past what the form allows: sent as typed by a script, the server still says no
    page.evaluate("document.getElementById('settings-system').removeAttribute('maxlength')")
    page.locator("#settings-system").fill("x" * 8001)
    page.locator("#settings-save").click()
    expect(page.locator("#settings-error")).to_contain_text("at most 8000 characters")
    expect(page.locator("#settings-dialog")).to_be_visible()
    page.locator("#settings-cancel").click()
    expect(page.locator("#settings-dialog")).to_be_hidden()


def test_an_answer_cut_by_its_length_says_so_and_continue_carries_on(tab, jarvis_server):
    fake = jarvis_server.fake
    fake.push(Script(tokens=["Once upon a time, a dragon ", "lived in a cave by the"], done_reason="length"))
    fake.script(tokens=[" sea, and guarded it well.", " The end."])
    tab.open()
    cut = tab.ask("Tell me a long story about a dragon.", "length")
    badge = cut.locator(".badge")
    expect(badge).to_have_text("Cut off")
    assert "length limit" in badge.get_attribute("title")
    expect(cut.locator(".continue")).to_be_visible()
    shoot(tab, "length.png")

    cut.locator(".continue").click()
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    expect(tab.page.locator(".msg-user .bubble").last).to_have_text("Continue")
    sent = fake.wait_for_calls(2)[1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"].endswith("lived in a cave by the") and sent[2]["content"] == "Continue"
    expect(tab.answer(0).locator(".continue")).to_be_hidden()  # only the last answer carries on
    expect(tab.answer(0).locator(".badge")).to_have_text("Cut off")

    tab.page.reload()  # from history: the badge and the last answer's state stay
    expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
    expect(tab.answer(0)).to_have_attribute("data-status", "length")
    expect(tab.answer(0).locator(".badge")).to_have_text("Cut off")


def test_progress_is_shown_before_the_first_token(tab, jarvis_server):
    # the fake says nothing for 1.5 s, as a model server loading a model does
    jarvis_server.fake.script(tokens=["Ready."], load_delay_s=1.5)
    tab.open()
    tab.send("hello")
    badge = tab.answer().locator(".badge")
    expect(badge).to_have_text("Waiting for the model…", timeout=1400)
    shoot(tab, "progress.png")
    assert jarvis_server.fake.wait_for_calls(1)[0].tokens_sent == 0  # before any text
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    expect(tab.answer().locator(".msg-content")).to_have_text("Ready.")
    # one token at once: the counts, and no speed made up from a span of microseconds
    expect(tab.answer().locator(".msg-speed")).to_have_text("1 token")


def test_speed_and_token_counts_are_shown_under_a_finished_answer(tab, jarvis_server):
    jarvis_server.fake.script(tokens=test_browser.words("w", 5), interval_s=0.05)
    tab.open()
    tab.ask("count")
    speed = tab.answer().locator(".msg-speed")
    expect(speed).to_have_text(re.compile(r"^\d+\.\d tokens/s · 5 tokens$"))
    assert "7 prompt tokens, 5 answer tokens, first token after" in speed.get_attribute("title")
    rate = float(speed.inner_text().split()[0])
    assert 10 < rate < 200  # 5 tokens over about 0.2 s of streaming
    shoot(tab, "speed.png")
    tab.page.reload()  # the same, from history
    expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
    expect(tab.answer().locator(".msg-speed")).to_have_text(f"{rate:.1f} tokens/s · 5 tokens")


@pytest.mark.skipif(not local.available(), reason="needs llama-cpp-python and the embedded model")
def test_the_embedded_model_shows_it_reads_the_prompt_before_the_first_token(browser, make_app, make_server):
    app = make_app(backend="local", first_token_timeout_s=45)
    url = make_server(app).url
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        assert context.request.get(f"{url}/?token={LOCAL_TOKEN}").ok
        t = test_browser.Tab(context.new_page(), url).open()
        # about 930 tokens: seconds of reading on two cores, and nothing cached yet
        t.send("Tell me everything about dragons and their caves. " * 100)
        badge = t.answer().locator(".badge")
        expect(badge).to_have_text(re.compile(r"^Reading your prompt \(\d{3,4} tokens\)…$"), timeout=20000)
        shoot(t, "reading.png")
        t.page.locator("#stop").click()  # the rest of the answer is not what this is about
        expect(t.answer()).to_have_attribute("data-status", "stopped")
        assert t.errors == [] and t.csp_violations() == []
    finally:
        context.close()
