"""The page while an answer uses tools from an MCP server: "Using NAME…" while a tool runs, its result
after (collapsed, as text), Stop mid-tool, and the chat's tool toggles, in a real Chromium against the
real app, the fake Ollama scripted to call the tools of tests/fake_mcp.py (a real MCP server)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid

import pytest

from tests import test_browser
from tests.conftest import ROOT
from tests.fake_ollama import Script
from tests.test_browser_settings import DOCS, open_settings
from tests.test_tools import tagged, wait_for

browser, tab = test_browser.browser, test_browser.tab  # the browser tests' fixtures
expect = test_browser.expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # a real Chromium and an MCP server process

UNTRUSTED = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & done'


@pytest.fixture
def mcp_tag() -> str:
    """Marks this test's fake MCP server processes, so /proc tells whether one outlived it."""
    return f"fake-mcp-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def jarvis_settings(tmp_path, mcp_tag):
    """The real app with one MCP server, "fake" (tests/fake_mcp.py), started on first use."""
    server = {
        "command": sys.executable,
        "args": ["-m", "tests.fake_mcp", mcp_tag],
        "env": {"FAKE_MCP_LOG": str(tmp_path / "fake.log"), "PYTHONPATH": ROOT},
    }
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"fake": server}}))
    yield {
        "JARVIS_MCP_CONFIG": str(path),
        "JARVIS_TOOL_TIMEOUT": "60",
        "JARVIS_TOOL_START_TIMEOUT": "20",
        "JARVIS_DETACH_GRACE": "10",  # a reload rejoins the answer
    }


@pytest.fixture(autouse=True)
def no_tool_process_left(mcp_tag):
    """Set up before the server, so it ends after it: then no fake MCP server is left running."""
    yield
    wait_for(lambda: not tagged(mcp_tag), 5.0, "every fake MCP server process to end")


def shoot(tab, name: str) -> None:
    """With SCREENSHOTS=1, a picture of the state for docs/, transitions finished."""
    if os.environ.get("SCREENSHOTS") == "1":
        png = tab.page.screenshot(animations="disabled")  # bytes: a path would write from another thread
        with open(os.path.join(DOCS, name), "wb") as f:
            f.write(png)


def calls_tool(name: str, said: str = "", **arguments) -> Script:
    """A model call that says ``said``, then asks for the tool ``name`` with ``arguments``."""
    return Script(tokens=[said] if said else [], tool_calls=[{"name": name, "arguments": arguments}])


def tool_names(body: dict) -> list[str]:
    return sorted(t["function"]["name"] for t in body.get("tools") or ())


def log_events(tmp_path) -> list[str]:
    try:
        with open(tmp_path / "fake.log") as f:
            return [json.loads(line)["event"] for line in f]
    except FileNotFoundError:
        return []


def test_a_running_tool_shows_using_and_stop_ends_the_answer_at_once(tab, jarvis_server, tmp_path):
    fake = jarvis_server.fake
    fake.push(
        calls_tool("fake__echo", "Let me check the forecast. ", text="Lisbon: 18 °C, clear"),
        Script(tokens=["It is **18 °C** and clear in Lisbon."]),
        calls_tool("fake__sleep", "I will wait for the tide table. ", seconds=60),
    )
    fake.script(tokens=["unexpected"])
    tab.open()
    done = tab.ask("What's the weather in Lisbon?")
    expect(done.get_by_role("group", name="Tool call: fake__echo").locator(".tool-head")).to_contain_text(
        "Used fake__echo"
    )
    done.locator(".tool-result summary").click()  # opened for the picture

    tab.send("And when is high tide?")
    answer = tab.answer()
    block = answer.get_by_role("group", name="Tool call: fake__sleep")
    expect(block.locator(".tool-head")).to_have_text("Using fake__sleep…")
    expect(block).to_have_attribute("data-state", "running")
    expect(block.locator(".tool-arguments pre")).to_have_text('{\n  "seconds": 60\n}')
    expect(block.locator(".tool-arguments pre")).to_be_hidden()  # collapsible: collapsed at first
    expect(block.locator(".tool-arguments summary")).to_contain_text('{"seconds":60}')
    # the text before the call stays above it
    expect(answer.locator(".msg-part")).to_have_text("I will wait for the tide table.")
    wait_for(lambda: "sleeping" in log_events(tmp_path), 10.0, "the tool to run")
    shoot(tab, "agent.png")
    block.locator(".tool-arguments summary").click()
    expect(block.locator(".tool-arguments pre")).to_be_visible()

    began = time.monotonic()
    tab.page.get_by_role("button", name="Stop the answer").click()
    expect(answer).to_have_attribute("data-status", "stopped", timeout=2000)
    took = time.monotonic() - began
    print(f"Stop to a stopped answer while a tool ran: {took * 1000:.0f} ms")
    assert took < 1.0, f"Stop took {took:.2f} s to end an answer whose tool was running"
    expect(block).to_have_attribute("data-state", "unanswered")
    expect(block.locator(".tool-head")).to_contain_text("no result")
    expect(block.locator(".tool-head")).not_to_contain_text("Using")
    expect(tab.page.locator("#stop")).to_be_hidden()
    wait_for(lambda: "cancelled" in log_events(tmp_path), 5.0, "the MCP server to hear the cancel")


def test_a_tool_result_is_collapsed_text_placed_where_the_call_was_made_and_kept(tab, jarvis_server):
    fake = jarvis_server.fake
    fake.push(calls_tool("fake__echo", "Let me look. ", text=UNTRUSTED))
    fake.script(tokens=["The tool said something ", "odd."])
    tab.open()
    answer = tab.ask("Echo something hostile")

    def check(answer) -> None:
        block = answer.get_by_role("group", name="Tool call: fake__echo")
        expect(block).to_have_attribute("data-state", "done")
        expect(block.locator(".tool-head")).to_contain_text("Used fake__echo")
        result = block.locator(".tool-result")
        expect(result.locator("pre")).to_have_text(UNTRUSTED)  # as text, never HTML
        expect(result.locator("pre")).to_be_hidden()  # collapsed
        result.locator("summary").click()
        expect(result.locator("pre")).to_be_visible()
        assert answer.locator(".msg-body script, .msg-body img").count() == 0
        assert tab.page.evaluate("window.__pwned") is None
        # in the order it was made: the text before the call, the call, the text after
        expect(answer.locator(".msg-part")).to_have_text("Let me look.")
        expect(answer.locator(".msg-content")).to_have_text("The tool said something odd.")
        order = answer.locator(".msg-part, .tool-call, .msg-content").evaluate_all(
            "(nodes) => nodes.map((n) => n.className.split(' ')[0])"
        )
        assert order == ["msg-part", "tool-call", "msg-content"]

    check(answer)
    tab.page.reload()  # as stored: the same
    expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
    check(tab.answer())


def test_a_reload_while_a_tool_runs_shows_it_running_again(tab, jarvis_server, tmp_path):
    fake = jarvis_server.fake
    fake.push(calls_tool("fake__sleep", "Waiting. ", seconds=60))
    tab.open()
    tab.send("Wait for me")
    running = '[role="group"][aria-label="Tool call: fake__sleep"][data-state="running"]'
    expect(tab.answer().locator(running)).to_be_visible()
    wait_for(lambda: "sleeping" in log_events(tmp_path), 10.0, "the tool to run")
    tab.page.reload()  # the answer goes on (the detach grace); the page rejoins it from its start
    expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
    answer = tab.answer()
    expect(answer.locator(running).locator(".tool-head")).to_have_text("Using fake__sleep…")
    expect(answer.locator(".msg-part")).to_have_text("Waiting.")
    expect(answer.locator(".tool-call")).to_have_count(1)
    tab.page.get_by_role("button", name="Stop the answer").click()
    expect(answer).to_have_attribute("data-status", "stopped")
    expect(answer.locator(".tool-call")).to_have_attribute("data-state", "unanswered")


def test_an_error_result_is_marked(tab, jarvis_server):
    fake = jarvis_server.fake
    fake.push(calls_tool("fake__nosuch"))
    fake.script(tokens=["That tool does not exist."])
    tab.open()
    answer = tab.ask("Use a tool that is not there")
    block = answer.get_by_role("group", name="Tool call: fake__nosuch")
    expect(block).to_have_attribute("data-state", "error")
    expect(block.locator(".tool-result summary")).to_contain_text("Error")


def test_a_tool_switched_off_in_the_settings_is_not_offered_to_the_model(tab, jarvis_server):
    fake = jarvis_server.fake
    fake.script(tokens=["Hello."])
    tab.open()
    tab.ask("hello")  # the first answer starts the MCP server: its tools are listed from then on
    assert "fake__echo" in tool_names(fake.wait_for_calls(1)[0].body)
    page = tab.page
    open_settings(page)
    section = page.locator("#settings-tools")
    expect(section).to_be_visible()
    echo = section.get_by_role("switch", name="fake__echo", exact=True)
    expect(echo).to_be_checked()
    echo.uncheck()
    page.locator("#settings-save").click()
    expect(page.locator("#settings-dialog")).to_be_hidden()
    expect(page.locator("#settings-chip")).to_have_attribute("title", re.compile("6 tools"))

    tab.ask("again")
    offered = tool_names(fake.wait_for_calls(2)[1].body)
    assert "fake__echo" not in offered and "fake__sleep" in offered

    page.reload()  # stored with the chat: the switches read it back
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    open_settings(page)
    expect(section.get_by_role("switch", name="fake__echo", exact=True)).not_to_be_checked()
    expect(section.get_by_role("switch", name="fake__sleep", exact=True)).to_be_checked()
    section.get_by_role("button", name="None").click()
    page.locator("#settings-save").click()
    expect(page.locator("#settings-dialog")).to_be_hidden()
    tab.ask("and with none?")
    assert "tools" not in fake.wait_for_calls(3)[2].body

    open_settings(page)
    section.get_by_role("button", name="All").click()
    page.locator("#settings-save").click()
    expect(page.locator("#settings-dialog")).to_be_hidden()
    sid = page.evaluate("decodeURIComponent(location.hash.slice(1))")
    assert "tools" not in jarvis_server.app.extensions["jarvis"].store.settings(sid)  # all: the default


def test_without_tools_configured_the_settings_have_no_tools_section(tab, jarvis_server):
    jarvis_server.fake.script(tokens=["Hi"])
    page = tab.page
    page.route("**/api/tools", lambda route: route.fulfill(json={"configured": False, "servers": []}))
    tab.open()
    tab.ask("hello")
    with page.expect_response("**/api/tools"):
        open_settings(page)
    page.evaluate("() => new Promise((done) => requestAnimationFrame(done))")  # the page acts on it
    expect(page.locator("#settings-tools")).to_be_hidden()
