"""/healthz serves a background probe's answer: a hung model server never reaches a request thread."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from jarvis.upstream.health import Prober
from tests.conftest import HTTP_TIMEOUT, Api, wait_for
from tests.fake_ollama import FakeOllama
from tests.hung_server import HungServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def hung():
    with HungServer() as server:
        yield server


def _stop_latency(api: Api, sid: str) -> float:
    began = time.monotonic()
    assert api.stop(sid) == {"stopped": True}
    return time.monotonic() - began


@pytest.mark.slow  # the hung server's probes take seconds to wind down
def test_stop_is_not_delayed_by_healthz_against_a_hung_model_server(hung, make_app, make_server):
    # would hang: each /healthz probing the hung server in the request holds a waitress thread
    # for the probe's read timeout (2 s), and 40 of them queue the Stop behind them
    app = make_app(ollama_url=hung.url, max_streams=2, connect_timeout_s=1.0)  # 6 waitress threads
    api = Api(make_server(app).url)
    sid = api.session()
    sse = api.send(sid, "x")  # waits for a first token that never comes
    assert sse.next()[0] == "start"
    baseline = _stop_latency(api, sid)
    assert sse.end()["status"] == "stopped"

    sse = api.send(sid, "y")
    assert sse.next()[0] == "start"
    answered = []

    def hammer():
        r = requests.get(api.url + "/healthz", headers=api.headers, timeout=(2, 30))
        answered.append(r.json()["upstream_ok"])

    threads = [threading.Thread(target=hammer, name=f"healthz-{i}") for i in range(40)]
    for t in threads:
        t.start()
    try:
        hammered = _stop_latency(api, sid)
        assert sse.end()["status"] == "stopped"
    finally:
        for t in threads:
            t.join(30)
    assert answered == [False] * 40
    # the old code took at least the probe's 2 s read timeout; the margin absorbs two busy cores
    assert hammered < max(0.5, baseline * 10), (baseline, hammered)


@pytest.mark.slow  # the hung server's probes take seconds to wind down
def test_healthz_answers_at_once_while_the_model_server_hangs(hung, make_app, make_server):
    app = make_app(ollama_url=hung.url)
    api = Api(make_server(app).url)
    began = time.monotonic()
    health = requests.get(api.url + "/healthz", headers=api.headers, timeout=HTTP_TIMEOUT).json()
    assert time.monotonic() - began < 0.5  # the old code waited the probe's 2 s read timeout
    assert health["upstream_ok"] is False


def test_healthz_follows_the_model_server_coming_and_going(make_app, make_server, fake):
    app = make_app(health_interval_s=0.05)
    api = Api(make_server(app).url)

    def upstream_ok():
        r = requests.get(api.url + "/healthz", headers=api.headers, timeout=HTTP_TIMEOUT)
        return r.json()["upstream_ok"]

    assert upstream_ok() is True
    fake.close()  # refuses connections from now on
    wait_for(lambda: upstream_ok() is False, timeout=5, what="the probe to see the server gone")


def test_a_prompt_that_finds_the_server_gone_turns_healthz_down_at_once(make_app, make_server, fake):
    app = make_app(health_interval_s=60)  # the next scheduled probe is a minute away
    api = Api(make_server(app).url)
    assert health(api)["upstream_ok"] is True
    fake.close()
    end = api.send(api.session(), "x").end()
    assert end["error"]["code"] == "upstream_unavailable"
    assert health(api)["upstream_ok"] is False  # not a minute later
    with FakeOllama(port=fake.port):
        wait_for(lambda: health(api)["upstream_ok"] is True, timeout=5, what="the re-probe to see it back")


def health(api: Api) -> dict:
    return requests.get(api.url + "/healthz", headers=api.headers, timeout=HTTP_TIMEOUT).json()


def test_closing_the_prober_is_bounded_while_a_probe_hangs():
    # would hang: a close that joins a probe stuck in a hung server's read without a timeout
    release = threading.Event()
    entered = threading.Event()

    def check() -> dict:
        entered.set()
        release.wait(10)
        return {"ok": True}

    prober = Prober(check, 0.05).start(first_wait_s=0)
    assert entered.wait(5)
    began = time.monotonic()
    assert prober.close(0.1) is False
    assert time.monotonic() - began < 1
    release.set()
    assert prober.close(5) is True


def test_a_crashing_probe_is_reported_down_and_probing_goes_on(caplog):
    calls = []

    def check() -> dict:
        calls.append(1)
        raise RuntimeError("a bug in a check")

    prober = Prober(check, 0.01).start()
    try:
        wait_for(lambda: len(calls) >= 2, what="a second probe after the crash")
        answer, at = prober.latest()
        assert answer["ok"] is False and answer["error"]["code"] == "internal_error" and at > 0
        assert "health probe upstream crashed" in caplog.text
    finally:
        assert prober.close(5)
