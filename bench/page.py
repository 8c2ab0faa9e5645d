"""``python -m bench.page``: what rendering a long streaming answer costs the page's main thread.

Headless Chromium loads the page's own ``markdown.js`` and streams one long Markdown answer
(headings, lists, tables and code blocks) into it at a fixed rate of tokens per second,
repainting once per animation frame as the page does. Three renderers take turns in the same
browser: the text appended as plain text (the floor), the whole answer re-rendered every
frame (the renderer the page used before), and the incremental renderer (only the block that
still grows is parsed again). Main-thread and script time come from Chromium's own counters;
the longest frame is the longest gap between two animation frames.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import math
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path

from .report import load, machine
from .stats import percentile

STATIC = Path(__file__).resolve().parents[1] / "jarvis" / "static"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
MODES = ("plain", "whole", "incremental")
FRAME_TARGET_MS = 50.0
SCRIPT_RATIO_TARGET = 2.0

HARNESS = """<!doctype html><meta charset="utf-8"><title>render bench</title>
<div id="out" class="markdown"></div>
<script type="module">
import { renderMarkdown, renderWhole } from "/static/markdown.js";
const renderers = {
  plain: (el, text, shown) => el.append(text.slice(shown)),
  whole: (el, text) => renderWhole(el, text),
  incremental: (el, text) => renderMarkdown(el, text, { stream: "bench" }),
};
// stream `tokens` at `rate` per second; repaint once per frame while text is new
window.stream = (mode, tokens, rate) => new Promise((resolve) => {
  const el = document.getElementById("out");
  el.replaceChildren();
  const render = renderers[mode];
  let text = "", shown = 0, sent = 0, last = null;
  const gaps = [], costs = [];
  const began = performance.now();
  const timer = setInterval(() => {
    const due = Math.min(tokens.length, Math.floor(((performance.now() - began) / 1000) * rate) + 1);
    while (sent < due) text += tokens[sent++];
    if (sent === tokens.length) clearInterval(timer);
  }, 1000 / rate);
  const frame = (now) => {
    if (last !== null) gaps.push(now - last);
    last = now;
    if (text.length !== shown) {
      const t0 = performance.now();
      render(el, text, shown);
      costs.push(performance.now() - t0);
      shown = text.length;
    }
    if (sent === tokens.length && shown === text.length) {
      resolve({ seconds: (performance.now() - began) / 1000, gaps, costs, chars: text.length });
    } else requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
});
window.ready = true;
</script>"""


def answer(chars: int) -> str:
    """A deterministic Markdown answer of about ``chars`` characters, a third of it code."""
    parts, n = [], 0
    while n < chars:
        i = len(parts)
        part = (
            f"## Step {i}: reading the **configuration**\n\n"
            f"The server reads `JARVIS_SETTING_{i}` once at start-up, checks it and says which "
            "variable is wrong when it is; see [the guide](https://example.org/guide) for more. "
            "Every wait has a *timeout*, and cancellation closes the socket.\n\n"
            "- first, open the file\n- then, parse it line by line\n- last, close it again\n\n"
            "```python\n"
            + f"def on_{i}(event, timeout=0.5):\n    return event.wait(timeout)\n" * 6
            + "```\n\n"
            + ("| setting | default |\n|---|---|\n| heartbeat | 1.0 |\n| idle | 60 |\n\n" * (i % 3 == 0))
            + ("> Note: a stalled upstream sends nothing at all.\n\n" if i % 4 == 1 else "")
        )
        parts.append(part)
        n += len(part)
    return "".join(parts)[:chars]


def tokens_of(text: str) -> list[str]:
    """Split into word-sized tokens (a word with the spaces after it), as a model streams them."""
    out, start = [], 0
    for i in range(1, len(text)):
        if not text[i].isspace() and text[i - 1].isspace():
            out.append(text[start:i])
            start = i
    out.append(text[start:])
    return out


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802  (the stdlib's name)
        if self.path in ("/", "/index.html"):
            body = HARNESS.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def translate_path(self, path: str) -> str:
        return super().translate_path(path.removeprefix("/static"))

    def log_message(self, *args) -> None:
        pass  # one line per module fetch would bury the table


def measure(chars: int, rate: float, chromium: str) -> dict[str, dict]:
    from playwright.sync_api import sync_playwright

    tokens = tokens_of(answer(chars))
    handler = functools.partial(_Handler, directory=str(STATIC))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serving = threading.Thread(target=server.serve_forever, name="bench-page-static")
    serving.start()
    results = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(600_000)
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
                page.wait_for_function("window.ready === true")
                cdp = page.context.new_cdp_session(page)
                cdp.send("Performance.enable")
                for mode in MODES:
                    before = _metrics(cdp)
                    run = page.evaluate("([m, t, r]) => window.stream(m, t, r)", [mode, tokens, rate])
                    after = _metrics(cdp)
                    results[mode] = _summary(run, before, after, len(tokens))
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
        serving.join(5.0)
    return results


def _metrics(cdp) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def _summary(run: dict, before: dict, after: dict, tokens: int) -> dict:
    seconds = run["seconds"]
    gaps = sorted(run["gaps"])
    return {
        "seconds": seconds,
        "tokens": tokens,
        "chars": run["chars"],
        "main_ms_per_s": (after["TaskDuration"] - before["TaskDuration"]) * 1000 / seconds,
        "script_ms_per_s": (after["ScriptDuration"] - before["ScriptDuration"]) * 1000 / seconds,
        "render_ms": sum(run["costs"]),
        "renders": len(run["costs"]),
        "frame_p50_ms": percentile(gaps, 50),
        "frame_p99_ms": percentile(gaps, 99),
        "frame_max_ms": gaps[-1] if gaps else math.nan,
        "frames_over": sum(1 for g in gaps if g > FRAME_TARGET_MS),
    }


def table(results: dict[str, dict], command: str) -> str:
    plain, inc = results["plain"], results["incremental"]
    ratio = inc["script_ms_per_s"] / plain["script_ms_per_s"] if plain["script_ms_per_s"] else math.inf
    first = next(iter(results.values()))
    lines = [
        f"`{command}` — {first['chars']:,} characters in {first['tokens']:,} tokens, "
        f"{first['tokens'] / first['seconds']:.0f} tokens/s; {machine()}; load {load()}",
        "",
        "| renderer | main thread ms/s | script ms/s | render calls | render ms total "
        "| frame p50 ms | frame p99 ms | longest frame ms | frames > 50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "plain": "plain text (floor)",
        "whole": "whole answer each frame (before)",
        "incremental": "incremental",
    }
    for mode in MODES:
        r = results[mode]
        lines.append(
            f"| {names[mode]} | {r['main_ms_per_s']:.1f} | {r['script_ms_per_s']:.1f} | {r['renders']} "
            f"| {r['render_ms']:.0f} | {r['frame_p50_ms']:.1f} | {r['frame_p99_ms']:.1f} "
            f"| {r['frame_max_ms']:.1f} | {r['frames_over']} |"
        )
    verdict = "meets" if inc["frame_max_ms"] <= FRAME_TARGET_MS and ratio <= SCRIPT_RATIO_TARGET else "misses"
    whole = results["whole"]["script_ms_per_s"] / max(inc["script_ms_per_s"], 1e-9)
    lines += [
        "",
        f"Incremental script time is {ratio:.2f}× plain text (target ≤ {SCRIPT_RATIO_TARGET:g}×); "
        f"its longest frame {inc['frame_max_ms']:.1f} ms (target ≤ {FRAME_TARGET_MS:g} ms): "
        f"{verdict} the target. "
        f"Drawing the whole answer each frame costs {whole:.1f}× the incremental renderer's script time.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.page", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 characters instead of 100,000")
    parser.add_argument("--chars", type=int, help="length of the answer in characters")
    parser.add_argument("--rate", type=float, default=200.0, help="tokens per second (default: 200)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    chars = args.chars or (10_000 if args.quick else 100_000)
    began = time.monotonic()
    results = measure(chars, args.rate, args.chromium)
    print(table(results, " ".join(["python -m bench.page", *map(shlex.quote, argv)])))
    print(f"\n(took {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
