"""The whole conversation in a real Chromium against the real app and the fake Ollama: thinking shown
collapsed above its answer, tool calls and their results as compact blocks, and images attached to a
prompt (button, paste, drop) for a model that can see them."""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib

import pytest

from tests import test_browser
from tests.fake_ollama import Script
from tests.test_browser_chats import store_of
from tests.test_browser_settings import shoot

browser, tab = test_browser.browser, test_browser.tab  # the browser tests' fixtures
expect = test_browser.expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # a real Chromium

MiB = 1024 * 1024


def png(width: int, height: int, colour=(0, 0, 0), padding: int = 0) -> bytes:
    """A real PNG (a diagonal gradient from ``colour``), ``padding`` bytes longer after its end."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00"
        + bytes(
            v
            for x in range(width)
            for v in ((colour[0] + 3 * x) % 256, (colour[1] + 3 * y) % 256, (colour[2] + x + y) % 256)
        )
        for y in range(height)
    )
    head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body + b"\x00" * padding


def file_of(name: str, data: bytes) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def drop_or_paste(page, how: str, name: str, data: bytes) -> None:
    """Pastes into the prompt, or drops on the conversation, one file as a person would."""
    page.evaluate(
        """([how, name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            const opts = { bubbles: true, cancelable: true };
            data.items.add(new File([bytes], name, { type: "image/png" }));
            if (how === "paste") {
              const paste = new ClipboardEvent("paste", { clipboardData: data, ...opts });
              document.getElementById("prompt").dispatchEvent(paste);
              return;
            }
            const where = document.getElementById("conversation");
            for (const type of ["dragenter", "dragover", "drop"]) {
              where.dispatchEvent(new DragEvent(type, { dataTransfer: data, ...opts }));
            }
        }""",
        [how, name, base64.b64encode(data).decode()],
    )


def wait_for_image(img) -> None:
    """Until ``img`` has loaded (it is lazy), under the expect timeout."""
    loaded = "i => i.complete && i.naturalWidth > 0"
    img.page.wait_for_function(loaded, arg=img.element_handle(), timeout=6000)


def sent_images(fake) -> list[str]:
    """The images of the last user message the fake Ollama was sent (base64)."""
    last = fake.chat_calls()[-1].body["messages"][-1]
    return last.get("images") or []


# thinking


def test_thinking_streams_collapsed_then_says_optslong_it_took(tab, jarvis_server):
    thoughts = ["The user wants ", "a haiku. ", "<b>Not</b> bold: ", "plain text.\nFive, seven, five."]
    jarvis_server.fake.script(
        thinking=thoughts, tokens=["Autumn ", "moonlight— ", "a worm digs ", "silently"], interval_s=0.3
    )
    tab.open()
    tab.send("Write a haiku about the moon")
    answer = tab.answer()
    thinking = answer.locator("details.thinking")
    # live: collapsed, saying it is still thinking, while nothing of the answer has come
    expect(thinking.locator("summary")).to_have_text("Thinking…")
    assert not thinking.evaluate("d => d.open")
    expect(answer).to_have_attribute("data-status", "streaming")
    expect(answer.locator(".msg-content")).to_have_text("")
    # opened by the keyboard, it shows the thoughts so far, and then the rest as they come
    thinking.locator("summary").focus()
    tab.page.keyboard.press("Enter")
    expect(thinking.locator(".thinking-text")).to_contain_text("The user wants")
    expect(thinking.locator(".thinking-text")).to_have_text("".join(thoughts))
    assert thinking.locator(".thinking-text b").count() == 0  # text, never HTML
    expect(thinking.locator("summary")).to_have_text(re.compile(r"Thought for (\d\.\d s|less than a second)"))
    expect(answer).to_have_attribute("data-status", "completed")
    expect(answer.locator(".msg-content")).to_have_text("Autumn moonlight— a worm digs silently")
    label = thinking.locator("summary").text_content()
    assert thinking.evaluate("d => d.open")  # a repaint does not close what the reader opened
    tab.page.locator("#prompt").focus()
    shoot(tab, "thinking.png")
    # as stored: the same words, the same time, collapsed again
    tab.open()
    thinking = tab.answer().locator("details.thinking")
    expect(thinking.locator("summary")).to_have_text(label)
    assert not thinking.evaluate("d => d.open")
    expect(thinking.locator(".thinking-text")).to_have_text("".join(thoughts))


def test_an_answer_without_thinking_has_no_thinking_block(tab, jarvis_server):
    jarvis_server.fake.script(tokens=["just ", "text"])
    tab.open()
    answer = tab.ask("Hello")
    expect(answer.locator(".msg-content")).to_have_text("just text")
    expect(answer.locator(".thinking")).to_have_count(0)


def test_replaced_by_a_newer_prompt_while_thinking_the_block_stops_thinking(tab, jarvis_server):
    jarvis_server.fake.push(
        Script(thinking=[f"thought {i} " for i in range(200)], interval_s=0.05), Script(tokens=["new"])
    )
    tab.open()
    tab.send("Think a long time")
    first = tab.answer(0)
    expect(first.locator("details.thinking summary")).to_have_text("Thinking…")
    tab.send("Never mind")
    expect(first).to_have_attribute("data-status", "superseded")
    expect(first.locator("details.thinking summary")).to_contain_text("Thought")
    expect(tab.answer(1)).to_have_attribute("data-status", "completed")


# tool calls


def test_a_streamed_tool_call_shows_its_name_and_arguments_escaped(tab, jarvis_server):
    arguments = {"city": "Lisbon", "note": "<img src=x onerror=alert(1)>"}
    jarvis_server.fake.script(tokens=[], tool_calls=[{"name": "get_weather", "arguments": arguments}])
    tab.open()
    answer = tab.ask("Weather in Lisbon?")
    block = answer.get_by_role("group", name="Tool call: get_weather")
    expect(block.locator(".tool-name")).to_have_text("get_weather")
    expect(block.locator(".tool-arguments pre")).to_have_text(json.dumps(arguments, indent=2))
    assert block.locator("img").count() == 0
    expect(answer.locator(".tool-result")).to_have_count(0)  # no result yet
    expect(answer.locator(".msg-nothing")).to_have_count(0)  # a call is not "no text"
    tab.open()
    expect(tab.answer().get_by_role("group", name="Tool call: get_weather")).to_be_visible()


def test_a_stored_tool_call_and_its_result_soptsas_one_compact_block(tab, jarvis_server):
    store = store_of(jarvis_server)
    sid = store.create_session()["id"]
    _, answer = store.add_exchange(sid, "What's the weather in Lisbon, in Celsius?", "t" * 16, "tiny")
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city":"Lisbon","unit":"celsius"}'}
    thinking = "I need the current weather: call the tool."
    meta = {"thinking": thinking, "thinking_ms": 2400, "tool_calls": [call]}
    store.save_answer(answer, "", "completed", meta=meta)
    result = {"role": "tool", "content": '{"temperature": 18, "sky": "clear"}', "tool_call_id": "call_1"}
    _, answer = store.add_exchange(sid, result | {"name": "get_weather"}, "t" * 16, "tiny")
    store.save_answer(answer, "It is **18 °C** and clear in Lisbon.", "completed")
    tab.open(f"#{sid}")
    first = tab.answer(0)
    expect(first.locator("details.thinking summary")).to_have_text("Thought for 2.4 s")
    block = first.get_by_role("group", name="Tool call: get_weather")
    pretty_arguments = '{\n  "city": "Lisbon",\n  "unit": "celsius"\n}'
    expect(block.locator(".tool-arguments pre")).to_have_text(pretty_arguments)
    expect(block.locator(".tool-result pre")).to_have_text('{\n  "temperature": 18,\n  "sky": "clear"\n}')
    expect(tab.page.locator(".msg-tool")).to_be_hidden()  # the result is shown in its call's block
    expect(tab.answer(1).locator(".msg-content strong")).to_have_text("18 °C")
    shoot(tab, "tools.png")


# images


def test_the_attach_button_shows_only_for_a_model_that_can_see(tab, jarvis_server):
    jarvis_server.fake.capabilities["llama3.2"] = ["completion", "tools"]  # tiny: every capability
    tab.open()
    attach = tab.page.get_by_role("button", name="Attach images")
    expect(attach).to_be_visible()
    tab.page.locator("#model").select_option("llama3.2:latest")
    expect(attach).to_be_hidden()
    # a pasted image is refused in the page, with a message, and nothing is sent
    drop_or_paste(tab.page, "paste", "cat.png", png(8, 8))
    expect(tab.page.locator("#notice")).to_contain_text("does not take images")
    expect(tab.page.locator(".attachment")).to_have_count(0)
    tab.page.locator("#model").select_option("tiny:latest")
    expect(attach).to_be_visible()


def test_images_from_the_button_a_paste_and_a_drop_are_sent_and_shown(tab, jarvis_server):
    fake = jarvis_server.fake
    fake.script(tokens=["A red square, ", "a green one ", "and a blue one."])
    pictures = {"red.png": png(48, 48, (200, 0, 0)), "green.png": png(48, 32, (0, 160, 0))}
    pictures["blue.png"] = png(32, 48, (0, 0, 220))
    tab.open()
    page = tab.page
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach images").click()
    chooser.value.set_files([file_of("red.png", pictures["red.png"])])
    drop_or_paste(page, "paste", "green.png", pictures["green.png"])
    drop_or_paste(page, "drop", "blue.png", pictures["blue.png"])
    expect(page.locator(".attachment")).to_have_count(3)
    expect(page.locator(".attachment canvas")).to_have_count(3)
    # one removed again, by the keyboard; focus stays in the attachments
    page.get_by_role("button", name="Remove image green.png").focus()
    page.keyboard.press("Enter")
    expect(page.locator(".attachment")).to_have_count(2)
    expect(page.get_by_role("button", name="Remove image blue.png")).to_be_focused()
    # put back, and sent with the prompt
    drop_or_paste(page, "drop", "green.png", pictures["green.png"])
    answer = tab.ask("What colours are these?")
    expect(page.locator(".attachment")).to_have_count(0)
    assert sorted(base64.b64decode(b) for b in sent_images(fake)) == sorted(
        pictures[n] for n in ("red.png", "blue.png", "green.png")
    )
    expect(answer.locator(".msg-content")).to_contain_text("blue one")
    # shown on the message at once, and after a reload as the server stored them, by address
    expect(page.locator(".msg-user").last.locator(".msg-images canvas")).to_have_count(3)
    tab.open()
    user = page.locator(".msg-user").last
    expect(user.locator(".msg-images img")).to_have_count(3)
    expect(user.get_by_role("img", name="Attached image 1 of 3")).to_be_visible()
    for img in user.locator(".msg-images img").all():
        img.scroll_into_view_if_needed()
        wait_for_image(img)
    assert user.locator(".msg-images img").first.get_attribute("src").startswith("api/images/")
    page.locator("#prompt").fill("And this one?")
    drop_or_paste(page, "drop", "red.png", pictures["red.png"])
    expect(page.locator(".attachment")).to_have_count(1)
    shoot(tab, "images.png")


def test_images_over_the_limits_are_refused_before_anything_is_sent(tab, jarvis_server):
    tab.open()
    page = tab.page
    expect(page.get_by_role("button", name="Attach images")).to_be_visible()
    drop_or_paste(page, "drop", "huge.png", png(4, 4, padding=9 * MiB))
    too_big = "The image huge.png is 9.0 MiB: an image may be at most 8 MiB"
    expect(page.locator("#notice")).to_contain_text(too_big)
    expect(page.locator(".attachment")).to_have_count(0)
    drop_or_paste(page, "drop", "one.png", png(4, 4, padding=7 * MiB))
    expect(page.locator(".attachment")).to_have_count(1)
    drop_or_paste(page, "drop", "two.png", png(4, 4, padding=6 * MiB))
    too_many = "images come to 13.0 MiB: a prompt's images may be at most 12 MiB together"
    expect(page.locator("#notice")).to_contain_text(too_many)
    expect(page.locator(".attachment")).to_have_count(1)
    assert jarvis_server.fake.chat_calls() == []


def test_images_sent_to_a_model_that_cannot_see_are_refused_and_kept_with_the_text(tab, jarvis_server):
    jarvis_server.fake.capabilities["llama3.2"] = ["completion"]
    tab.open()
    page = tab.page
    expect(page.get_by_role("button", name="Attach images")).to_be_visible()  # tiny can see
    drop_or_paste(page, "drop", "cat.png", png(16, 16))
    expect(page.locator(".attachment")).to_have_count(1)
    # another model picked with the image still attached: the server turns the prompt away
    page.locator("#model").select_option("llama3.2:latest")
    expect(page.get_by_role("button", name="Attach images")).to_be_hidden()
    tab.send("What is this?")
    expect(page.locator("#notice")).to_contain_text("The model cannot do that")
    expect(page.locator("#notice")).to_contain_text("images")
    expect(page.locator(".attachment")).to_have_count(1)
    expect(page.locator("#prompt")).to_have_value("What is this?")
    expect(page.locator(".msg")).to_have_count(0)
    assert jarvis_server.fake.chat_calls() == []
