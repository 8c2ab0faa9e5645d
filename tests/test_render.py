"""The page's Markdown renderer in a real Chromium: drawing an answer as it grows gives exactly
what drawing it whole gives, while the blocks already finished keep their nodes."""

from __future__ import annotations

import pytest

from tests import test_browser

browser, tab = test_browser.browser, test_browser.tab  # the browser tests' fixtures
expect = test_browser.expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # a real Chromium

ANSWER = (
    "# Title\n\nSome *text* with `code`, **bold** and a [link](https://example.org).\n"
    "A second line\r\nwith CRLF.\n\n"
    "Setext heading\n---\n\n"
    "- one\n- two\n  - nested\n- three\n\n"
    "1. first\n2. second\n\n"
    "   continued item paragraph\n\n"
    "```python\ndef f(x):\n    return x * 2\n\n\nprint(f(2))\n```\n\n"
    "> a quote\nlazy line\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\n"
    "<div>raw html stays text</div>\n\n"
    "***\n\n"
    "```\nunclosed fence at the very end\nstill code"
)

# Feed the answer a few characters at a time. ``redraw`` forces the growing block to be drawn
# at every step (a clock far apart); otherwise steps come 1 ms apart and only the last forces it.
FEED = """async ([answer, redraw]) => {
  const md = await import("/static/markdown.js");
  const grown = document.createElement("div"), whole = document.createElement("div");
  const steps = [1, 2, 3, 5, 8, 13];
  let at = 0, i = 0, now = 0, firstNode = null, mismatch = null;
  while (at < answer.length) {
    at = Math.min(answer.length, at + steps[i++ % steps.length]);
    now += redraw ? 1e6 : 1;
    md.renderMarkdown(grown, answer.slice(0, at), { stream: "trace-1", now });
    if (redraw) {
      md.renderWhole(whole, answer.slice(0, at));
      if (!mismatch && grown.innerHTML !== whole.innerHTML) mismatch = answer.slice(0, at);
    }
    if (!firstNode && grown.children.length > 2) firstNode = grown.firstElementChild;
  }
  md.renderMarkdown(grown, answer, { stream: "trace-1", now: now + 1e6 });
  md.renderWhole(whole, answer);
  return {
    mismatch, grown: grown.innerHTML, whole: whole.innerHTML,
    kept: grown.firstElementChild === firstNode && firstNode !== null,
  };
}"""


@pytest.mark.parametrize("redraw", [True, False], ids=["drawn-every-step", "drawn-at-the-end"])
def test_an_answer_drawn_as_it_grows_matches_the_answer_drawn_whole(tab, redraw):
    tab.open()
    out = tab.page.evaluate(FEED, [ANSWER, redraw])
    assert out["mismatch"] is None, f"differs once the answer reads {out['mismatch']!r}"
    assert out["grown"] == out["whole"]
    if redraw:
        assert out["kept"], "a finished block was drawn again instead of keeping its node"
    assert "<script" not in out["grown"] and "&lt;div&gt;raw html" in out["grown"]


def test_the_last_words_of_an_answer_are_drawn_after_a_pause(tab):
    tab.open()
    done = tab.page.evaluate(
        """async () => {
          const md = await import("/static/markdown.js");
          const el = document.createElement("div");
          md.renderMarkdown(el, "Hello", { stream: "trace-1", now: 0 });
          // 1 ms later: appended as plain text
          md.renderMarkdown(el, "Hello **world**", { stream: "trace-1", now: 1 });
          const raw = el.innerHTML.includes("**world**");
          await new Promise((resolve) => setTimeout(resolve, 400));
          return { raw, after: el.innerHTML };
        }"""
    )
    assert done["raw"], "a quick second call appends plain text"
    assert "<strong>world</strong>" in done["after"], "the pending text was drawn as Markdown"


def draw(tab, *calls: tuple[str, str, float], read: str = "innerHTML") -> str:
    """Draw each (text, stream, now) in turn into one element, as the page does; what it then shows."""
    tab.open()
    return tab.page.evaluate(
        """async ([calls, read]) => {
          const md = await import("./static/markdown.js");
          const el = document.createElement("div");
          for (const [text, stream, now] of calls) md.renderMarkdown(el, text, { stream, now });
          return el[read];
        }""",
        [list(calls), read],
    )


def test_a_text_of_another_stream_is_drawn_whole(tab):
    html = draw(
        tab,
        ("First **answer** here", "trace-1", 0),
        ("Other *answer* here, longer", "trace-2", 1),  # another answer, 1 ms later
    )
    assert html.strip() == "<p>Other <em>answer</em> here, longer</p>"


def test_words_typed_between_redraws_go_into_the_paragraph_being_written(tab):
    # the parser writes a line break after each block: text appended after it stood outside the
    # paragraph, on a line of its own, until the next redraw
    html = draw(tab, ("t0 ", "trace-1", 0), ("t0 t1 ", "trace-1", 1))  # 1 ms later: appended, not redrawn
    assert html.strip() == "<p>t0 t1 </p>"


def test_a_text_of_another_stream_is_drawn_anew_though_it_starts_and_ends_as_the_shown_one(tab):
    # "the same answer, grown" was judged by the first 64 and the last 256 characters drawn: a
    # second answer that matched them kept the first answer's middle on screen
    head, tail = "Same start. " * 8, " same end" * 40
    text = draw(
        tab,
        (f"{head}first middle{tail}", "trace-1", 0),
        (f"{head}other middle{tail} and more", "trace-2", 1e6),
        read="textContent",
    )
    assert "other middle" in text and "first middle" not in text
    assert text.strip().endswith("and more")


def test_a_stream_that_starts_again_from_its_first_token_is_drawn_anew(tab):
    # a rejoin replays an answer from its start: a shorter text of the same stream is not an extension
    html = draw(tab, ("One two three", "trace-1", 0), ("One", "trace-1", 1e6))
    assert html.strip() == "<p>One</p>"


def test_the_page_keeps_the_finished_paragraphs_of_an_answer_as_it_streams(tab, jarvis_server):
    # the page names the answer's stream, so its text is drawn as that stream grown: a paragraph
    # once finished keeps its node (drawn whole, it was drawn anew on every frame)
    jarvis_server.fake.script(tokens=["First paragraph.\n\n", *test_browser.words("w", 40)], interval_s=0.03)
    tab.open()
    tab.send("Write two paragraphs")
    tab.answer().locator(".msg-content").wait_for()
    tab.page.evaluate(
        """() => {
          window.__redrawn = 0;
          const content = document.querySelector(".msg-assistant .msg-content");
          new MutationObserver((records) => {
            for (const r of records) {
              for (const node of r.removedNodes) {
                if (node.nodeName === "P" && node.textContent.startsWith("First")) window.__redrawn++;
              }
            }
          }).observe(content, { childList: true, subtree: true });
        }"""
    )
    expect(tab.answer()).to_have_attribute("data-status", "completed")
    expect(tab.answer().locator(".msg-content p")).to_have_count(2)
    # drawn whole once when the stream starts, then once more as a finished block: never again
    assert tab.page.evaluate("window.__redrawn") <= 2
