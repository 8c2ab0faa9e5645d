"""Section 18: embeddings per second through Jarvis beside the fake Ollama's ``/api/embed`` read directly.

One client posts batches one after another, keep-alive where the server keeps the connection
(Jarvis does; the fake closes each one, as every fake answer does), and parses every answer, the
base64 vectors decoded to floats as OpenAI's client does. Each run sends the same batches to each
door in turn (a different door first each run), so the doors share the machine's load; the rate is
the median over the runs.
"""

from __future__ import annotations

import base64
import statistics
import time
from array import array
from pathlib import Path

from .client import Control
from .stats import Cell, Row, Section, judge, ratio
from .trials import Subject

TARGET = 0.9  # Jarvis's rate over the direct rate, for batches
DIMS = 32  # the fake's longest vector (a sha256's bytes); real models give 384 to 4096
TEXT_CHARS = 200
REPRODUCE = "python -m bench --sections 18"
HOW = """- **Embeddings (section 18).** The run's fake Ollama and `jarvis serve`: one client posts the same
  batches (texts of 200 characters, `dimensions` 32) to the fake's own `/api/embed` and to Jarvis's
  `/api/embed` and `/v1/embeddings` (`encoding_format` float and base64), one request after another,
  each door in turn within a run and a different one first each run; it parses every answer (base64
  decoded to floats). Embeddings per second is texts over a run's wall time, the median of the runs;
  batches are judged by Jarvis's median over the direct one, single inputs only shown.
"""  # the bullet of "How it is measured" (bench/__main__.py's ABOUT)
# (label, path, body extra, judged): the doors, the first read directly from the fake
DOORS = (
    ("direct", "/api/embed", {}, False),
    ("/api/embed", "/api/embed", {}, True),
    ("/v1/embeddings float", "/v1/embeddings", {"encoding_format": "float"}, True),
    ("/v1/embeddings base64", "/v1/embeddings", {"encoding_format": "base64"}, True),
)


def texts(count: int, seed: int) -> list[str]:
    """``count`` different texts of about TEXT_CHARS characters (a paragraph of a document)."""
    words = " ".join(f"word{seed}-{i}-{j}" for i in range(count) for j in range(30)).split()
    per = len(words) // count
    return [" ".join(words[i * per : (i + 1) * per])[:TEXT_CHARS] for i in range(count)]


def _vectors(door: str, found: dict) -> list[list[float]]:
    if door.startswith("/v1/"):
        data = [d["embedding"] for d in found["data"]]
        if door.endswith("base64"):
            return [array("f", base64.b64decode(d)).tolist() for d in data]
        return data
    return found["embeddings"]


def _rate(control: Control, door: tuple, batches: list[list[str]]) -> float:
    """Embeddings per second over ``batches`` posted one after another through ``door``."""
    label, path, extra, _ = door
    began = time.perf_counter()
    for batch in batches:
        body = {"model": "tiny", "input": batch, "dimensions": DIMS, **extra}
        status, found = control.call("POST", path, body)
        vectors = _vectors(label, found) if status == 200 else []
        if len(vectors) != len(batch) or len(vectors[0]) != DIMS:
            raise RuntimeError(f"{label} answered {status}: {str(found)[:200]}")
    return sum(map(len, batches)) / (time.perf_counter() - began)


def run(subject: Subject, direct_url: str | None, quick: bool, workdir: Path | None = None) -> Section:
    section = Section("18", "Embeddings per second, through Jarvis and directly")
    if workdir is not None:  # first: the real model's rows do not depend on the fake
        from . import embed_model

        model_rows, model_notes = embed_model.rows(workdir, quick, texts)
        section.rows += model_rows
        section.notes += model_notes
    if direct_url is None:
        section.notes.append("Needs an upstream to read directly (not measured with --target alone).")
        return section
    clients = {"direct": Control(direct_url), "jarvis": Control(subject.url)}
    runs = 3 if quick else 9
    shapes = (
        ("batches of 256", 256, 2 if quick else 10),  # JARVIS_EMBED_MAX_INPUTS: an indexing job
        ("batches of 16", 16, 20 if quick else 60),
        ("single inputs", 1, 60 if quick else 300),
    )
    try:
        for name, size, requests in shapes:
            batches = [texts(size, i) for i in range(requests)]
            for door in DOORS:  # warm: connections, imports, the first answer of each route
                _rate(clients["direct" if door[0] == "direct" else "jarvis"], door, batches[:3])
            rates: dict[str, list[float]] = {door[0]: [] for door in DOORS}
            for r in range(runs):
                for door in DOORS[r % 4 :] + DOORS[: r % 4]:  # each door first in turn
                    client = clients["direct" if door[0] == "direct" else "jarvis"]
                    rates[door[0]].append(_rate(client, door, batches))
            section.rows += _rows(section.number, name, size, rates)
    finally:
        for client in clients.values():
            client.close()
    section.notes.append(
        f"Reproduce: `{REPRODUCE}` (`--quick` for a smoke run). Texts of {TEXT_CHARS} characters, "
        f"`dimensions` {DIMS} (the fake's longest vector); {runs} runs, each door in turn within a run. "
        "Batches are judged (≥ ×0.9 of direct); single inputs are shown for information: the fake answers "
        "in microseconds, so one input per request measures Jarvis's per-request cost, not an embedding's."
    )
    return section


def _rows(number: str, name: str, size: int, rates: dict[str, list[float]]) -> list[Row]:
    direct = Cell(value=statistics.median(rates["direct"]))
    rows = []
    for label, _, _, judged in DOORS[1:]:
        cell = Cell(value=statistics.median(rates[label]))
        cells = {"Jarvis": cell, "direct": direct}
        judged = judged and size > 1
        shown = ratio(cell, direct, "Jarvis/direct")
        row = Row(number, f"{name}, {label}", "embeddings/s", cells, ratio=shown)
        if judged:
            row.target = f"≥ ×{TARGET} of direct"
            row.holds = judge(Cell(value=cell.value / direct.value), TARGET, higher_is_better=True)
        spread = f"{min(rates[label]):,.0f} to {max(rates[label]):,.0f}"
        each, alone = size / cell.value * 1000, size / direct.value * 1000
        row.note = (
            f"{each:.2f} ms a request against {alone:.2f} direct (+{each - alone:.2f} ms); runs {spread}, "
            f"direct {min(rates['direct']):,.0f} to {max(rates['direct']):,.0f}"
        )
        rows.append(row)
    return rows
