"""Section 8: several model hosts and background health probes.

- Routing overhead: time to first token read through ``Hosts`` (two hosts, least busy first)
  against the same host read directly by ``OllamaUpstream``, alternating, in this process.
- Stop while ``/healthz`` is hammered: ``jarvis serve`` in front of a model server that accepts
  connections and never answers; a stream waits for its first token and is stopped, once with
  the server otherwise idle and once while 40 clients request ``/healthz`` without pause.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from jarvis.cancel import CancelScope
from jarvis.config import Config
from jarvis.conversation import Chat
from jarvis.upstream.hosts import Hosts
from jarvis.upstream.ollama import OllamaUpstream
from tests.hung_server import HungServer

from .client import AUTH, stop_to_end_ms
from .servers import ServerProcess, jarvis_command, jarvis_env
from .stats import Cell, Row, Section, beside_direct, ratio, within
from .upstream import directive

HAMMERS = 40


def run(fake_url: str | None, workdir: Path, quick: bool) -> Section:
    section = Section("9", "Model hosts and health probes")
    if fake_url is None:
        section.notes.append("Not measured: this section needs the bench's own fake upstream.")
        return section
    routing_trials = 60 if quick else 400
    stop_trials = 5 if quick else 20
    direct, routed = _routing(fake_url, routing_trials)
    overhead = Cell(value=routed.p50 - direct.p50)
    section.rows += [
        beside_direct(
            "9",
            "time to first token, upstream read in-process",
            "ms",
            routed,
            direct,
            "hosts/direct",
            digits=2,
        ),
        within(
            "9",
            "routing overhead on time to first token (p50 − p50)",
            "ms",
            {"Jarvis": overhead},
            "Jarvis",
            1.0,
            target="≤ 1 ms",
            digits=3,
        ),
    ]
    with HungServer() as hung:
        healthy = _stop_under_health_load("healthy", fake_url, workdir, stop_trials)
        stuck = _stop_under_health_load("hung", hung.url, workdir, stop_trials)
    slowdown = Cell(value=stuck["hammered"].p50 / healthy["hammered"].p50)
    for name, got in (("healthy", healthy), ("hung", stuck)):
        section.rows += [
            Row("9", f"stop → end event, {name} model server, idle", "ms", {"Jarvis": got["idle"]}),
            Row(
                "9",
                f"stop → end event, {name} model server, {HAMMERS} clients on /healthz",
                "ms",
                {"Jarvis": got["hammered"]},
                ratio=ratio(got["hammered"], got["idle"], "hammered/idle"),
            ),
        ]
    section.rows.append(
        within(
            "9",
            "hammered stop, hung / healthy model server (p50 / p50)",
            "×",
            {"Jarvis": slowdown},
            "Jarvis",
            1.5,
            target="≤ 1.5",
            digits=2,
        )
    )
    section.notes += [
        f"routing: {routing_trials} prompts per side, alternating; 'direct' is OllamaUpstream.stream_chat, "
        "'Jarvis' is Hosts over two URLs of the same fake (127.0.0.1 and localhost)",
        f"stop rows: {stop_trials} stops per row, alternating; jarvis serve with JARVIS_MAX_STREAMS=16 "
        "(20 threads); the stream waits for its first token (the hung server never answers; the "
        "healthy one is scripted to load for 30 s). Hammered: 40 clients request /healthz without pause "
        "(one connection each, in the benchmark process), so the stop queues behind their CPU time; the "
        "hung/healthy row shows what the hung server adds to that",
        f"/healthz answered {healthy['answered']} times (healthy) and {stuck['answered']} (hung) "
        "during the hammered stops. Before /healthz read a background probe, each request against the hung "
        "server took the probe's 2 s read timeout: the server never passed this bench's 1 s health check, "
        "and in tests/test_health.py the Stop request itself timed out after 5 s",
    ]
    return section


def _routing(fake_url: str, trials: int) -> tuple[Cell, Cell]:
    port = fake_url.rsplit(":", 1)[1]
    config = Config(model="tiny", ollama_url=fake_url, health_interval_s=5.0)
    direct = OllamaUpstream(config)
    routed = Hosts.from_config(
        Config(model="tiny", upstreams=f"ollama={fake_url},ollama=http://localhost:{port}")
    )
    samples: dict[str, list[float]] = {"direct": [], "routed": []}
    try:
        for i in range(trials + 5):
            for name, upstream in (("direct", direct), ("routed", routed)):
                first = _first_token_ms(upstream, directive(f"route-{name}-{i}", tokens=3))
                if i >= 5:  # the first few warm the connection code paths
                    samples[name].append(first)
    finally:
        routed.close()
        direct.close()
    return Cell.of(samples["direct"]), Cell.of(samples["routed"])


def _first_token_ms(upstream, prompt: str) -> float | None:
    began = time.monotonic()
    first = None
    chunks = upstream.stream_chat(Chat("tiny", [{"role": "user", "content": prompt}]), CancelScope())
    try:
        for item in chunks:
            if isinstance(item, str) and first is None:
                first = (time.monotonic() - began) * 1000
    finally:
        chunks.close()
    return first


def _stop_under_health_load(name: str, upstream_url: str, workdir: Path, trials: int) -> dict:
    env = jarvis_env(upstream_url, "tiny", workdir / f"{name}.sqlite3", JARVIS_MAX_STREAMS="16")
    command = [*jarvis_command(), "serve", "--port", "0"]
    server = ServerProcess(f"jarvis serve ({name} upstream)", command, env, workdir)
    idle, hammered = [], []
    answered = failures = 0
    try:
        for i in range(trials):
            idle.append(_stop_ms(server.url, f"{name}-idle-{i}"))
            with _Hammer(server.url + "/healthz") as hammer:
                hammered.append(_stop_ms(server.url, f"{name}-hammered-{i}"))
            answered += hammer.answered
            failures += hammer.failed
    finally:
        server.stop()
    return {
        "idle": Cell.of(idle, bound=10_000),
        "hammered": Cell.of(hammered, bound=10_000),
        "answered": f"{answered} ({failures} failed)",
    }


class _Hammer:
    """``HAMMERS`` clients requesting ``url`` without pause while the block runs (at most 30 s)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered = self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Barrier(HAMMERS + 1)
        self._threads = [threading.Thread(target=self._run, name=f"hammer-{i}") for i in range(HAMMERS)]

    def _run(self) -> None:
        deadline = time.monotonic() + 30
        with requests.Session() as http:
            http.headers.update(AUTH)  # the full /healthz, as a monitor with a credential sees it
            http.get(self.url, timeout=(2, 10))  # connected before the measured stop
            self._running.wait(15)
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    http.get(self.url, timeout=(2, 10))
                    ok = True
                except requests.RequestException:
                    ok = False  # counted, and reported in the notes
                with self._lock:
                    self.answered += ok
                    self.failed += not ok

    def __enter__(self) -> _Hammer:
        for t in self._threads:
            t.start()
        self._running.wait(15)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def _stop_ms(url: str, tag: str) -> float | None:
    """Milliseconds from POST stop to the end event of a stream waiting for its first token."""
    # the bench fake loads for 30 s; the hung server never answers
    return stop_to_end_ms(url, directive(tag, load_delay_s=30))
