"""The page's Markdown renderer in a real Chromium: drawing an answer as it grows gives exactly
what drawing it whole gives, while the blocks already finished keep their nodes."""

from __future__ import annotations

import pytest

from tests import test_browser

browser, tab = test_browser.browser, test_browser.tab  # the browser tests' fixtures

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
    md.renderMarkdown(grown, answer.slice(0, at), now);
    if (redraw) {
      md.renderWhole(whole, answer.slice(0, at));
      if (!mismatch && grown.innerHTML !== whole.innerHTML) mismatch = answer.slice(0, at);
    }
    if (!firstNode && grown.children.length > 2) firstNode = grown.firstElementChild;
  }
  md.renderMarkdown(grown, answer, now + 1e6);
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
          md.renderMarkdown(el, "Hello", 0);
          md.renderMarkdown(el, "Hello **world**", 1);  // 1 ms later: appended as plain text
          const raw = el.innerHTML.includes("**world**");
          await new Promise((resolve) => setTimeout(resolve, 400));
          return { raw, after: el.innerHTML };
        }"""
    )
    assert done["raw"], "a quick second call appends plain text"
    assert "<strong>world</strong>" in done["after"], "the pending text was drawn as Markdown"


def test_a_text_that_does_not_extend_the_shown_one_is_drawn_whole(tab):
    tab.open()
    html = tab.page.evaluate(
        """async () => {
          const md = await import("/static/markdown.js");
          const el = document.createElement("div");
          md.renderMarkdown(el, "First **answer** here", 0);
          md.renderMarkdown(el, "Other *answer* here, longer", 1);  // 1 ms later, but not an extension
          return el.innerHTML;
        }"""
    )
    assert html.strip() == "<p>Other <em>answer</em> here, longer</p>"


def test_words_typed_between_redraws_go_into_the_paragraph_being_written(tab):
    # the parser writes a line break after each block: text appended after it stood outside the
    # paragraph, on a line of its own, until the next redraw
    tab.open()
    html = tab.page.evaluate(
        """async () => {
          const md = await import("/static/markdown.js");
          const el = document.createElement("div");
          md.renderMarkdown(el, "t0 ", 0);
          md.renderMarkdown(el, "t0 t1 ", 1);  // 1 ms later: appended, not redrawn
          return el.innerHTML;
        }"""
    )
    assert html.strip() == "<p>t0 t1 </p>"
