"""The everyday chat features in a real Chromium: rename, date groups, timestamps, copy, search,
export and import, and the page for a missing path."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import pytest

from tests import test_browser

browser, tab = test_browser.browser, test_browser.tab  # the browser tests' fixtures
expect = test_browser.expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # a real Chromium

DAY_S = 86400


def store_of(jarvis_server):
    return jarvis_server.app.extensions["jarvis"].store


def past_chat(jarvis_server, title: str, days_ago: float) -> str:
    """A chat with one exchange, last written ``days_ago`` days ago."""
    store = store_of(jarvis_server)
    sid = store.create_session()["id"]
    _, answer = store.add_exchange(sid, title, "t" * 16, "tiny")
    store.save_answer(answer, f"an answer about {title}", "completed")
    when = time.time() - days_ago * DAY_S
    with store.connect() as db:
        db.execute("UPDATE sessions SET updated_at = ?, created_at = ? WHERE id = ?", (when, when, sid))
        db.execute("UPDATE messages SET created_at = ? WHERE session_id = ?", (when, sid))
    return sid


def test_rename_by_double_click_and_by_the_menu_is_kept_after_a_reload(tab, jarvis_server):
    jarvis_server.fake.script(tokens=["Hi", "!"])
    tab.open()
    tab.ask("first prompt")
    page = tab.page
    page.locator(".session.is-active .session-open").dblclick()
    field = page.locator(".session-rename")
    expect(field).to_be_focused()
    field.fill("Holiday plans")
    field.press("Enter")
    expect(page.locator(".session.is-active .session-title")).to_have_text("Holiday plans")
    expect(page.locator("#chat-title")).to_have_text("Holiday plans")

    page.locator("#chat-menu summary").click()
    page.locator("#rename-chat").click()
    page.locator(".session-rename").fill("Trip to Porto")
    page.locator(".session-rename").press("Escape")  # gives up: the title stays
    expect(page.locator(".session.is-active .session-title")).to_have_text("Holiday plans")

    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator(".session.is-active .session-title")).to_have_text("Holiday plans")


def test_chats_are_grouped_by_date_and_messages_show_their_time(tab, jarvis_server):
    past_chat(jarvis_server, "last month", 40)
    past_chat(jarvis_server, "three days ago", 3)
    past_chat(jarvis_server, "yesterday's chat", 1)
    jarvis_server.fake.script(tokens=["Fine"])
    tab.open()
    tab.page.locator("#new-chat").click()
    tab.ask("today's question")
    groups = ["Today", "Yesterday", "Previous 7 days", "Older"]
    expect(tab.page.locator(".session-group")).to_have_text(groups)
    stamp = tab.page.locator(".msg-user .msg-time").last
    expect(stamp).to_have_text(re.compile(r"^\d{1,2}:\d{2}( [AP]M)?$"))  # the clock, in the reader's locale
    written = datetime.fromisoformat(stamp.get_attribute("datetime").replace("Z", "+00:00"))
    assert abs(written.timestamp() - time.time()) < 60
    assert str(time.localtime().tm_year) in stamp.get_attribute("title")  # the full date
    expect(tab.answer().locator(".msg-time")).to_be_visible()


def test_copy_puts_the_whole_message_on_the_clipboard(tab, jarvis_server):
    reply = "# Heading\n\nSome **bold** text.\n\n```python\nprint(1)\n```"
    jarvis_server.fake.script(tokens=[reply])
    tab.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    tab.open()
    tab.ask("a prompt\nwith two lines")
    tab.answer().locator(".copy-message").click()
    expect(tab.answer().locator(".copy-message")).to_have_text("Copied")
    assert tab.page.evaluate("navigator.clipboard.readText()") == reply  # the Markdown as written
    tab.page.locator(".msg-user .copy-message").click()
    assert tab.page.evaluate("navigator.clipboard.readText()") == "a prompt\nwith two lines"
    expect(tab.answer().locator(".copy-message")).to_have_accessible_name("Copy message")
    tab.answer().locator(".code-block .copy").click()  # a code block's Copy takes the code alone
    assert tab.page.evaluate("navigator.clipboard.readText()") == "print(1)"


def test_a_streaming_answer_has_no_copy_until_it_ends(tab, jarvis_server):
    jarvis_server.fake.script(tokens=test_browser.words("w", 200), interval_s=0.02)
    tab.open()
    tab.send("go")
    expect(tab.answer().locator(".msg-content")).to_contain_text("w3")
    expect(tab.answer().locator(".copy-message")).to_have_count(0)
    expect(tab.answer()).to_have_attribute("data-status", "completed", timeout=15000)
    expect(tab.answer().locator(".copy-message")).to_have_count(1)


def test_search_finds_a_chat_by_its_text_and_opens_it(tab, jarvis_server):
    wanted = past_chat(jarvis_server, "pelicans", 2)
    past_chat(jarvis_server, "walruses", 2)
    tab.open()
    page = tab.page
    page.locator("#search").fill("pelic")
    results = page.locator("#search-results .search-result")
    expect(results).to_have_count(1)
    expect(results.first.locator(".search-snippet")).to_contain_text("pelicans")
    expect(page.locator("#session-list")).to_be_hidden()
    results.first.locator("button").click()
    expect(page.locator("#session-list")).to_be_visible()
    assert page.evaluate("location.hash") == "#" + wanted
    expect(page.locator(".msg-user .bubble")).to_have_text(["pelicans"])

    page.locator("#search").fill("nothing-like-this")
    expect(page.locator("#search-results .session-empty")).to_contain_text("No chat mentions")
    page.locator("#search").press("Escape")
    expect(page.locator("#session-list")).to_be_visible()


def test_export_downloads_the_chat_and_import_brings_it_back(tab, jarvis_server, tmp_path):
    jarvis_server.fake.script(tokens=["Forty", "-two"])
    tab.open()
    tab.ask("The answer?")
    page = tab.page
    page.locator("#chat-menu summary").click()
    with page.expect_download() as md:
        page.locator("#export-md").click()
    assert md.value.suggested_filename == "The-answer.md"
    assert "Forty-two" in open(md.value.path(), encoding="utf-8").read()
    page.locator("#chat-menu summary").click()
    with page.expect_download() as js:
        page.locator("#export-json").click()
    saved = tmp_path / js.value.suggested_filename
    js.value.save_as(saved)
    assert json.loads(saved.read_text())["messages"][1]["content"] == "Forty-two"

    page.locator("#import-chat").set_input_files(str(saved))
    expect(page.locator(".session")).to_have_count(2)
    expect(page.locator(".msg-assistant .msg-content")).to_have_text("Forty-two")
    expect(page.locator(".session.is-active .session-title")).to_have_text("The answer?")


def test_a_missing_page_is_a_page_with_a_way_back(tab, jarvis_server):
    response = tab.page.goto(jarvis_server.url + "/nope")
    assert response.status == 404
    expect(tab.page.locator("h1")).to_have_text("Page not found")
    tab.page.locator("a", has_text="Back to your chats").click()
    expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
    api = tab.page.request.get(jarvis_server.url + "/api/nope", headers={"Accept": "text/html"})
    assert api.status == 404 and api.headers["content-type"].startswith("application/json")


def test_new_chat_reuses_an_empty_chat_instead_of_making_another(tab, jarvis_server):
    tab.open()
    tab.page.locator("#new-chat").click()
    expect(tab.page.locator(".session")).to_have_count(1)  # made, and now on screen
    tab.page.locator("#new-chat").click()
    tab.page.locator("#new-chat").click()
    expect(tab.page.locator("#prompt")).to_be_focused()
    expect(tab.page.locator(".session")).to_have_count(1)
    assert len(store_of(jarvis_server).list_sessions()) == 1


def hold_first(page, pattern: str, method: str) -> list:
    """Hold the first ``method`` request to ``pattern`` until the test releases it; pass the rest."""
    held = []

    def hold(route):
        if route.request.method == method and not held:
            held.append(route)
        else:
            route.fallback()

    page.route(pattern, hold)
    return held


def test_a_prompt_sent_while_a_new_chat_is_being_made_goes_into_it(tab, jarvis_server):
    # New chat asks the server for a chat. A prompt sent before that answer came made a chat of its
    # own and was answered there, then the page switched to the new, empty chat (seen in CI).
    jarvis_server.fake.script(tokens=["Here ", "it is"])
    tab.open()
    held = hold_first(tab.page, "**/api/sessions", "POST")
    with tab.page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/sessions")):
        tab.page.locator("#new-chat").click()
    tab.send("Quick question")  # the page takes the key at once; the chat is not made yet
    held[0].fallback()
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    expect(tab.page.locator(".msg-user .bubble")).to_have_text(["Quick question"])
    expect(tab.answer().locator(".msg-content")).to_have_text("Here it is")
    expect(tab.page.locator(".session")).to_have_count(1)
    assert len(store_of(jarvis_server).list_sessions()) == 1


def test_a_history_that_left_the_server_before_a_prompt_keeps_the_prompt_and_its_answer(tab, jarvis_server):
    # Opening a chat fetches its history. A prompt sent and answered while that copy was on its way
    # is not in it, and the page took the copy as the truth: the prompt and its answer vanished
    # from the screen (seen in CI, as an empty chat after New chat and a prompt).
    sid = past_chat(jarvis_server, "With settings", 2)
    past_chat(jarvis_server, "Newest", 0.5)  # the chat the page opens first
    store_of(jarvis_server).set_settings(sid, {"temperature": 0.3})
    page = tab.page
    jarvis_server.fake.script(tokens=["Fresh ", "answer"])
    tab.open()
    stale = page.request.get(f"{jarvis_server.url}/api/sessions/{sid}").json()
    held = hold_first(page, f"**/api/sessions/{sid}", "GET")
    with page.expect_request(lambda r: r.method == "GET" and r.url.endswith(f"/api/sessions/{sid}")):
        page.locator(".session-open", has_text="With settings").click()
    tab.ask("Fresh prompt")
    held[0].fulfill(json=stale)
    expect(page.locator("#settings-chip")).to_be_visible()  # a history has been taken in
    expect(page.locator(".msg-user .bubble")).to_have_text(["With settings", "Fresh prompt"])
    expect(tab.answer().locator(".msg-content")).to_have_text("Fresh answer")


FILE_ANSWER = [
    "Iterate over the file object itself: Python reads it lazily, one line at a time, ",
    "so memory stays flat even for a file of many gigabytes.\n\n",
    "```python\nfrom pathlib import Path\n\n\ndef count_errors(path: Path) -> int:\n",
    '    errors = 0\n    with path.open(encoding="utf-8") as f:\n',
    "        for line in f:  # one line in memory at a time\n",
    '            if "ERROR" in line:\n                errors += 1\n    return errors\n```\n\n',
    "A few things worth knowing:\n\n",
    "- `with` closes the file even if the loop raises.\n",
    '- Each `line` keeps its trailing newline; use `line.rstrip("\\n")` to drop it.\n',
    '- For binary data, open with `"rb"` and read fixed-size chunks instead.',
]


def test_an_answer_with_code_and_a_list_reads_as_written(tab, jarvis_server):
    # the page as the README shows it: with SCREENSHOTS=1 this writes docs/screenshot.png
    from tests.test_browser_settings import shoot

    for title, days in (("Plan a weekend in Lisbon", 9), ("SQL: find duplicate rows", 1.2)):
        past_chat(jarvis_server, title, days)
    jarvis_server.fake.script(tokens=FILE_ANSWER, interval_s=0.01)
    tab.open()
    tab.page.locator("#new-chat").click()
    answer = tab.ask("How do I read a large file line by line in Python?")
    expect(answer.locator("pre code")).to_contain_text("def count_errors(path: Path) -> int:")
    expect(answer.locator("li")).to_have_count(3)
    expect(answer.locator(".code-head")).to_contain_text("python")
    expect(answer.locator(".msg-speed")).to_be_visible()
    expect(tab.page.locator(".session")).to_have_count(3)
    shoot(tab, "screenshot.png")
