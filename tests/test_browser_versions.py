"""Versions in a real Chromium: Regenerate and Edit keep what was there, behind ‹ i/n ›."""

from __future__ import annotations

import pytest

from tests import test_browser
from tests.fake_ollama import Script

browser, tab = test_browser.browser, test_browser.tab  # the browser tests' fixtures
expect = test_browser.expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # a real Chromium


def echo(body: dict) -> Script:
    """Answers "Re: <the prompt>", and says which of its answers to that prompt it is."""
    prompt = body["messages"][-1]["content"]
    return Script(tokens=["Re: ", prompt])


def test_regenerate_keeps_the_old_answer_reachable_with_the_arrows(tab, jarvis_server):
    jarvis_server.fake.push(Script(tokens=["First answer"]), Script(tokens=["Second answer"]))
    tab.open()
    page = tab.page
    tab.send("Name a colour")
    expect(tab.answer().locator(".msg-content")).to_have_text("First answer")
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    expect(tab.answer().locator(".versions")).to_have_count(0)  # one version: no arrows

    tab.answer().locator(".regenerate").click()
    expect(tab.answer().locator(".msg-content")).to_have_text("Second answer")
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    expect(page.locator(".msg")).to_have_count(2)  # in place of the old answer, not after it
    versions = tab.answer().locator(".versions")
    expect(versions.locator(".version-index")).to_have_text("2/2")
    expect(versions).to_have_accessible_name("Version 2 of 2")
    expect(versions.locator(".version-next")).to_be_disabled()

    versions.locator(".version-prev").click()
    expect(tab.answer().locator(".msg-content")).to_have_text("First answer")
    expect(tab.answer().locator(".version-index")).to_have_text("1/2")
    expect(tab.answer().locator(".version-next")).to_be_focused()  # a keyboard can step back at once
    page.reload()  # the version shown is the server's, not the page's
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(tab.answer().locator(".msg-content")).to_have_text("First answer")
    tab.answer().locator(".version-next").click()
    expect(tab.answer().locator(".msg-content")).to_have_text("Second answer")

    # only the last answer offers Regenerate
    jarvis_server.fake.script(tokens=["Third"])
    tab.send("And another?")
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    expect(tab.answer(0).locator(".regenerate")).to_be_hidden()
    expect(tab.answer().locator(".regenerate")).to_be_visible()


def test_edit_and_resend_keeps_the_old_prompt_and_answer_reachable(tab, jarvis_server):
    fake = jarvis_server.fake
    fake.script(echo)
    tab.open()
    page = tab.page
    tab.send("cats")
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    tab.send("dogs")
    expect(tab.answer().locator(".msg-content")).to_have_text("Re: dogs")
    expect(tab.answer()).to_have_attribute("data-status", "completed")

    prompt = page.locator(".msg-user").last
    prompt.locator(".edit-prompt").click()
    field = prompt.locator(".edit-text")
    expect(field).to_be_focused()
    expect(field).to_have_value("dogs")
    field.press("Escape")  # gives up: nothing sent
    expect(prompt.locator(".bubble")).to_have_text("dogs")
    assert len(fake.chat_calls()) == 2

    prompt.locator(".edit-prompt").click()
    prompt.locator(".edit-text").fill("birds")
    prompt.locator(".edit-send").click()
    expect(tab.answer().locator(".msg-content")).to_have_text("Re: birds")
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    expect(page.locator(".msg-user .bubble")).to_have_text(["cats", "birds"])
    expect(page.locator(".msg-user").last.locator(".version-index")).to_have_text("2/2")
    sent = fake.chat_calls()[-1].body["messages"]
    assert [m["content"] for m in sent] == ["cats", "Re: cats", "birds"]  # not the old "dogs"

    page.locator(".msg-user").last.locator(".version-prev").click()
    expect(page.locator(".msg-user .bubble")).to_have_text(["cats", "dogs"])
    expect(tab.answer().locator(".msg-content")).to_have_text("Re: dogs")
    assert len(fake.chat_calls()) == 3  # switching asks the model nothing

    # the first prompt edited: a conversation of its own, the old one a version away
    first = page.locator(".msg-user").first
    first.locator(".edit-prompt").click()
    first.locator(".edit-text").fill("fish")
    first.locator(".edit-text").press("Enter")
    expect(page.locator(".msg-user .bubble")).to_have_text(["fish"])
    expect(tab.answer().locator(".msg-content")).to_have_text("Re: fish")
    page.locator(".msg-user").first.locator(".version-prev").click()  # where it was last written
    expect(page.locator(".msg-user .bubble")).to_have_text(["cats", "birds"])
    expect(tab.answer().locator(".msg-content")).to_have_text("Re: birds")


def test_editing_a_prompt_while_it_is_answered_supersedes_that_answer(tab, jarvis_server):
    fake = jarvis_server.fake
    fake.push(Script(tokens=test_browser.words("w", 400), interval_s=0.03), Script(tokens=["Short."]))
    tab.open()
    page = tab.page
    tab.send("Tell me everything")
    expect(tab.answer().locator(".msg-content")).to_contain_text("w3")
    prompt = page.locator(".msg-user").last
    prompt.locator(".edit-prompt").click()
    prompt.locator(".edit-text").fill("Tell me briefly")
    prompt.locator(".edit-send").click()
    expect(tab.answer().locator(".msg-content")).to_have_text("Short.")
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    expect(page.locator(".msg")).to_have_count(2)
    expect(page.locator("#stop")).to_be_hidden()  # nothing left streaming
    assert fake.chat_calls()[0].wait_closed(2.0)  # the first answer's upstream is closed

    page.locator(".msg-user .version-prev").click()
    expect(page.locator(".msg-user .bubble")).to_have_text(["Tell me everything"])
    expect(tab.answer()).to_have_attribute("data-status", "superseded")
    expect(tab.answer().locator(".msg-content")).to_contain_text("w3")  # its text so far, kept


@pytest.mark.parametrize("jarvis_settings", [{"JARVIS_DETACH_GRACE": "10"}], ids=["grace"])  # to rejoin
def test_a_reload_mid_regenerate_rejoins_the_new_version_and_keeps_the_old(tab, jarvis_server):
    tokens = test_browser.words("n", 60)
    jarvis_server.fake.push(Script(tokens=["Old answer"]), Script(tokens=tokens, interval_s=0.05))
    tab.open()
    tab.send("Count for me")
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    tab.answer().locator(".regenerate").click()
    expect(tab.answer().locator(".msg-content")).to_contain_text("n3")
    tab.page.reload()
    expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
    expect(tab.answer()).to_have_attribute("data-status", "streaming")  # the new version, live again
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    expect(tab.answer().locator(".msg-content")).to_have_text("".join(tokens).strip())
    expect(tab.answer().locator(".version-index")).to_have_text("2/2")
    tab.answer().locator(".version-prev").click()
    expect(tab.answer().locator(".msg-content")).to_have_text("Old answer")


SLOW_FRAMES = """
// the compositor starved, as on a loaded machine: each frame comes 400 ms late
const realFrame = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => setTimeout(() => realFrame(callback), 400);
"""


def test_a_late_frame_never_paints_a_message_the_history_has_replaced(tab, jarvis_server):
    # Fails if a repaint queued for the page's own copy of a message is flushed after the stored
    # history replaced that copy: the prompt's foot is drawn again from the copy, without ‹ i/n ›.
    fake = jarvis_server.fake
    fake.script(echo)
    tab.page.add_init_script(SLOW_FRAMES)
    tab.open()
    page = tab.page
    tab.send("cats")
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    first = page.locator(".msg-user").first
    first.locator(".edit-prompt").click()
    first.locator(".edit-text").fill("fish")
    first.locator(".edit-text").press("Enter")
    expect(tab.answer().locator(".msg-content")).to_have_text("Re: fish")
    expect(page.locator(".msg-user").first.locator(".version-index")).to_have_text("2/2")
    # a frame asked for now comes after the ones already asked for: then the arrows must still be there
    page.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    expect(page.locator(".msg-user").first.locator(".version-index")).to_have_text("2/2")
