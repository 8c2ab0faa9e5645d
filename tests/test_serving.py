"""``jarvis serve`` as a server: how it learns that a client left, how it listens."""

from __future__ import annotations

import time

import pytest

from tests.conftest import clean_env, serve_process, stop_process
from tests.fake_ollama import Script

STATES = {
    "streaming": Script(tokens=100_000, interval_s=0.02),
    "stalled": Script(tokens=5, stall_after=2),
    "loading": Script(load_delay_s=30),
}


def _env(fake, tmp_path, **extra) -> dict:
    settings = dict(JARVIS_OLLAMA_URL=fake.url, JARVIS_MODEL="tiny", JARVIS_BACKEND="ollama")
    return clean_env(**{**settings, "JARVIS_DATABASE": str(tmp_path / "serve.sqlite3"), **extra})


@pytest.mark.slow  # a server process of its own
@pytest.mark.timeout(60)
def test_a_client_that_closes_during_silence_closes_the_upstream_at_once(fake, tmp_path):
    # would hang on for the whole poll interval (30 s here) and the whole heartbeat: only the
    # channel's own close event can end the answer in time
    env = _env(fake, tmp_path, JARVIS_DISCONNECT_POLL="30", JARVIS_HEARTBEAT="30")
    proc, api = serve_process(env)
    try:
        for n, (state, script) in enumerate(STATES.items()):
            fake.push(script)
            sse = api.send(api.session(), state)
            sse.until("token" if state != "loading" else "status")
            call = fake.wait_for_calls(n + 1)[n]
            left = time.monotonic()
            sse.close()
            assert call.wait_closed(5), f"{state}: the upstream stayed open"
            took = call.closed_at - left
            assert took < 0.1, f"{state}: the upstream closed {took * 1000:.0f} ms after the client left"
    finally:
        stop_process(proc)
