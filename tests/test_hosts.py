"""Several model hosts behind one Jarvis (JARVIS_UPSTREAMS): routing, failover and cancellation."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from jarvis.config import Config, ConfigError
from jarvis.upstream.hosts import Hosts
from tests.conftest import HTTP_TIMEOUT, ROOT, Api, clean_env, jarvis_command, wait_for
from tests.fake_ollama import FakeOllama, Script, overlapped
from tests.fake_openai import FakeOpenAI
from tests.hung_server import HungServer

STALL = Script(tokens=5, stall_after=1)  # one token, then silence until the client leaves


@pytest.fixture
def hosts():
    """Three fake Ollama servers; a test may close one (its port then refuses connections)."""
    fakes = [FakeOllama(), FakeOllama(), FakeOllama()]
    yield fakes
    for f in fakes:
        f.close()


def upstreams(*fakes, max_streams: int = 0) -> str:
    limit = f";max={max_streams}" if max_streams else ""
    return ",".join(f"ollama={f.url}{limit}" for f in fakes)


@pytest.fixture
def serve(make_app, make_server):
    def serve(*fakes, max_streams: int = 0, **overrides) -> Api:
        overrides.setdefault("health_interval_s", 0.05)
        app = make_app(upstreams=upstreams(*fakes, max_streams=max_streams), **overrides)
        return Api(make_server(app).url)

    return serve


def health(api: Api) -> dict:
    return requests.get(api.url + "/healthz", headers=api.headers, timeout=HTTP_TIMEOUT).json()


def host_state(api: Api, fake: FakeOllama) -> str:
    return next(h["state"] for h in health(api)["hosts"] if h["url"] == fake.url)


def test_a_prompt_goes_to_a_host_that_has_its_model(serve):
    with FakeOllama(models=("big",)) as a, FakeOllama(models=("tiny",)) as b:
        api = serve(a, b)
        models = requests.get(api.url + "/api/models", headers=api.headers, timeout=HTTP_TIMEOUT).json()
        assert {m["name"]: m["hosts"] for m in models["models"]} == {
            "big:latest": [a.url],
            "tiny:latest": [b.url],
        }
        assert [(h["url"], h["state"]) for h in models["hosts"]] == [(a.url, "up"), (b.url, "up")]
        for model, fake in (("big", a), ("big", a), ("tiny", b), ("tiny", b)):  # not in turns
            assert api.send(api.session(), "x", model=model).end()["status"] == "completed"
            assert fake.chat_calls()[-1].body["model"] == model
        assert len(a.chat_calls()) == len(b.chat_calls()) == 2
        metrics = requests.get(api.url + "/metrics", headers=api.headers, timeout=HTTP_TIMEOUT).text
        assert f'jarvis_host_live_answers{{host="{a.url}"}} 0.0' in metrics
        assert f'jarvis_host_time_to_first_token_seconds_count{{host="{b.url}"}} 2.0' in metrics


def test_answers_spread_to_the_least_busy_host(serve, hosts):
    for f in hosts:
        f.script(STALL)
    api = serve(*hosts)
    streams = []
    for _ in range(3):
        sse = api.send(api.session(), "x")
        sse.until("token")  # the answer is live on its host before the next prompt is routed
        streams.append(sse)
    assert [len(f.chat_calls()) for f in hosts] == [1, 1, 1]
    wait_for(
        lambda: {h["url"]: h["live"] for h in health(api)["hosts"]} == {f.url: 1 for f in hosts},
        what="/healthz to show one live answer per host",
    )
    for sse in streams:
        sse.close()
    for f in hosts:
        assert f.chat_calls()[0].wait_closed(2)


def test_a_dead_host_is_skipped_with_no_failed_answer(serve, hosts):
    a, b = hosts[:2]
    api = serve(a, b, health_interval_s=60)  # no probe before the first prompt: it picks a
    a.close()  # refuses connections from now on
    ends = [api.send(api.session(), "x").end() for _ in range(4)]
    assert [e["status"] for e in ends] == ["completed"] * 4
    assert len(b.chat_calls()) == 4
    metrics = requests.get(api.url + "/metrics", headers=api.headers, timeout=HTTP_TIMEOUT).text
    failures = f'jarvis_host_failures_total{{code="upstream_unavailable",host="{a.url}"}} 1.0'
    assert failures in metrics  # tried once, then skipped


def test_a_host_that_comes_back_is_used_again(serve, hosts):
    a, b = hosts[:2]
    b.script(STALL)
    api = serve(a, b)
    a.close()
    wait_for(lambda: host_state(api, a) == "down", what="the dead host marked down")
    with FakeOllama(port=a.port) as again:
        again.script(STALL)
        wait_for(lambda: host_state(api, a) == "up", what="the host back up")
        first = api.send(api.session(), "x")
        first.until("token")
        second = api.send(api.session(), "y")
        second.until("token")
        assert len(again.chat_calls()) == 1 and len(b.chat_calls()) == 1
        first.close()
        second.close()
        again.chat_calls()[0].wait_closed(2)
        b.chat_calls()[0].wait_closed(2)


def test_a_host_hanging_on_its_probe_delays_nothing_else(make_app, make_server, fake):
    # would hang: a probe of the hung host on a request thread, or a start-up waiting for it
    with HungServer() as hung:
        began = time.monotonic()
        app = make_app(upstreams=f"ollama={hung.url},ollama={fake.url}", health_interval_s=0.05)
        api = Api(make_server(app).url)
        assert time.monotonic() - began < 1.5  # the probe's read timeout is 2 s; start-up waits 0.5 s
        began = time.monotonic()
        states = {h["url"]: h["state"] for h in health(api)["hosts"]}
        assert states == {hung.url: "unknown", fake.url: "up"}
        sse = api.send(api.session(), "x")
        assert sse.end()["status"] == "completed" and sse.text() == "tok0 tok1 tok2 tok3 tok4 "
        assert time.monotonic() - began < 1.5
        assert len(fake.chat_calls()) == 1


def test_a_host_failing_before_the_first_token_is_retried_once_on_another(serve, hosts):
    a, b, c = hosts
    a.push(Script(refuse=True))  # resets the connection after reading the prompt
    api = serve(a, b)
    sid = api.session()
    sse = api.send(sid, "x")
    assert sse.end()["status"] == "completed" and sse.text() == "tok0 tok1 tok2 tok3 tok4 "
    assert len(a.chat_calls()) == 1 and len(b.chat_calls()) == 1
    assert host_state(api, a) == "up"  # a reset is not a dead host

    a.push(Script(refuse=True))
    b.push(Script(refuse=True))
    c.push(Script(refuse=True))
    api = serve(a, b, c)
    end = api.send(api.session(), "x").end()
    assert end["status"] == "failed" and end["error"]["code"] == "upstream_disconnected"
    assert [len(f.chat_calls()) for f in hosts] == [2, 2, 0]  # once, not once per host


def test_an_answer_never_moves_host_once_tokens_flowed(serve, hosts):
    a, b = hosts[:2]
    a.push(Script(tokens=5, drop_after=2))
    api = serve(a, b)
    sid = api.session()
    sse = api.send(sid, "x")
    end = sse.end()
    assert end["status"] == "failed" and end["error"]["code"] == "upstream_disconnected"
    assert sse.text() == "tok0 tok1 " and b.chat_calls() == []
    assert api.messages(sid)[-1]["content"] == "tok0 tok1 "


def test_stop_and_supersede_close_whichever_host_streams(serve, hosts):
    a, b = hosts[:2]
    a.script(STALL)
    b.script(STALL)
    api = serve(a, b)
    sid = api.session()
    first = api.send(sid, "x")
    first.until("token")
    on_a = a.wait_for_calls(1)[0]
    second = api.send(sid, "y")  # supersedes: the old answer's connection to a closes
    assert on_a.wait_closed(1)
    assert first.end()["status"] == "superseded"
    second.until("token")
    on_b = b.wait_for_calls(1)[0]  # a freed its slot, but b has answered fewer
    assert not overlapped(on_a, on_b)  # one live upstream call per session, across hosts too
    stopped = time.monotonic()
    assert api.stop(sid) == {"stopped": True}
    assert on_b.wait_closed(1)
    assert on_b.closed_at - stopped < 0.5
    assert second.end()["status"] == "stopped"


def test_a_prompt_waits_in_line_when_every_host_for_its_model_is_full(serve, hosts, monkeypatch):
    # would hang: a waiting prompt that only polls would sleep out this slice after a host frees
    # up or a stop arrives; a release and a cancel must wake it
    monkeypatch.setattr("jarvis.upstream.line.WAIT_SLICE_S", 30.0)
    a, b = hosts[:2]
    a.script(STALL)
    b.script(STALL)
    api = serve(a, b, max_streams=1)
    busy = [api.session(), api.session()]
    streams = [api.send(sid, "x") for sid in busy]
    for sse in streams:
        sse.until("token")
    waiting = api.session()
    queued = api.send(waiting, "z")
    assert queued.until("status") == {"state": "queued", "position": 1}
    api.stop(busy[0])  # frees a host: the waiting prompt takes it
    assert streams[0].end()["status"] == "stopped"
    queued.until("token")
    assert len(a.chat_calls()) + len(b.chat_calls()) == 3

    third = api.session()
    line = api.send(third, "w")
    assert line.until("status")["state"] == "queued"
    began = time.monotonic()
    api.stop(third)  # a stop reaches a prompt waiting for a host too
    assert line.end()["status"] == "stopped"
    assert time.monotonic() - began < 0.5
    for sid, sse in ((busy[1], streams[1]), (waiting, queued)):
        api.stop(sid)
        assert sse.end()["status"] == "stopped"


def test_upstreams_setting_is_checked_at_start(fake):
    with pytest.raises(ConfigError, match="JARVIS_UPSTREAMS"):
        Config.from_env({"JARVIS_UPSTREAMS": "ollama:http://h1:11434"})
    with pytest.raises(ConfigError, match="twice"):
        Config.from_env({"JARVIS_UPSTREAMS": f"ollama={fake.url},ollama={fake.url}/"})
    config = Config.from_env({"JARVIS_UPSTREAMS": f"ollama={fake.url};max=2"})
    assert [(h.kind, h.url, h.max_streams) for h in config.hosts()] == [("ollama", fake.url, 2)]
    router = Hosts.from_config(config)
    try:
        assert router.health()["hosts"][0]["state"] == "up"
    finally:
        router.close()


def test_ollama_and_openai_compatible_hosts_serve_side_by_side(make_app, make_server):
    with FakeOllama(models=("llama3.2",)) as ollama, FakeOpenAI(models=("qwen",)) as openai:
        hosts = f"ollama={ollama.url},openai={openai.api_url}"
        api = Api(make_server(make_app(upstreams=hosts, health_interval_s=0.05)).url)
        r = requests.get(api.url + "/api/models", headers=api.headers, timeout=HTTP_TIMEOUT)
        models = r.json()["models"]
        assert {m["name"]: m["hosts"] for m in models} == {
            "llama3.2:latest": [ollama.url],
            "qwen": [openai.api_url],
        }
        for model, fake in (("qwen", openai), ("llama3.2", ollama), ("qwen", openai)):
            assert api.send(api.session(), "x", model=model).end()["status"] == "completed"
            assert fake.chat_calls()[-1].body["model"] == model
        openai.script(STALL)
        sid = api.session()
        sse = api.send(sid, "x", model="qwen")
        sse.until("token")
        api.stop(sid)
        assert sse.end()["status"] == "stopped"
        assert openai.chat_calls()[-1].wait_closed(5), "the OpenAI-compatible host's connection stayed open"


def test_check_prints_each_host_and_its_state(fake, tmp_path):
    dead = "http://127.0.0.1:9"
    env = clean_env(
        JARVIS_UPSTREAMS=f"ollama={fake.url},ollama={dead}",
        JARVIS_MODEL="tiny",
        JARVIS_DATABASE=str(tmp_path / "check.sqlite3"),
    )
    out = subprocess.run(
        jarvis_command("check"), env=env, capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert out.returncode == 1, out.stdout
    assert f"ok   ollama host {fake.url} is up (2 models)" in out.stdout
    assert f"FAIL ollama host {dead} is down" in out.stdout
    assert "ok   model tiny is present" in out.stdout


@pytest.mark.timeout(60)
def test_a_freed_host_goes_to_the_first_in_line_not_to_a_later_prompt(serve, hosts):
    # would be lost: the place a prompt was told ("queued, position 1") when a later prompt
    # takes the freed host first
    a = hosts[0]
    a.script(STALL)
    api = serve(a, max_streams=1)
    busy = api.session()
    streams = [api.send(busy, "busy")]
    streams[0].until("token")
    for n in range(8):
        first, later = api.session(), api.session()
        waiting = api.send(first, f"first {n}")
        assert waiting.until("status") == {"state": "queued", "position": 1}
        newcomer = api.send(later, f"later {n}")
        assert newcomer.until("status") == {"state": "queued", "position": 2}
        api.stop(busy)  # frees the host: the first in line takes it, whoever wakes first
        waiting.until("token")
        assert a.chat_calls()[-1].prompt == f"first {n}", f"round {n}: {a.chat_calls()[-1].prompt}"
        assert newcomer.until("status") == {"state": "queued", "position": 1}
        api.stop(later)  # the line is empty again for the next round
        streams += [waiting, newcomer]
        busy = first
    api.stop(busy)
    for sse in streams:
        assert sse.end()["status"] == "stopped"


def test_a_queued_prompts_whole_wait_is_bounded_by_one_first_token_timeout(serve, hosts):
    # would hang on: a prompt that waited in line gets a second full first-token timeout at its host
    a = hosts[0]
    a.script(lambda body: STALL if body["messages"][-1]["content"] == "busy" else Script(load_delay_s=30))
    api = serve(a, max_streams=1, first_token_timeout_s=1.0)
    busy = api.session()
    holder = api.send(busy, "busy")
    holder.until("token")
    sent = time.monotonic()
    queued = api.send(api.session(), "x")
    assert queued.until("status")["state"] == "queued"
    wait_for(lambda: time.monotonic() - sent > 0.6, what="most of the timeout spent in line")
    api.stop(busy)  # the host takes the prompt now; it stays silent (a model loading)
    a.wait_for_calls(2)
    end = queued.end()
    took = time.monotonic() - sent
    assert end["status"] == "timeout" and end["error"]["code"] == "first_token_timeout"
    assert took < 1.4, f"the prompt waited {took:.2f} s for a first token bounded at 1 s"
    assert a.chat_calls()[1].wait_closed(2)
    assert holder.end()["status"] == "stopped"


def test_a_cancelled_prompt_leaves_the_line_at_once(serve, hosts, monkeypatch):
    # would be lost: a place in line held by a prompt that was stopped, ahead of the next one
    monkeypatch.setattr("jarvis.upstream.line.WAIT_SLICE_S", 30.0)  # nothing but the cancel moves it
    a = hosts[0]
    a.script(STALL)
    api = serve(a, max_streams=1)
    busy = api.session()
    holder = api.send(busy, "busy")
    holder.until("token")
    gone, next_ = api.session(), api.session()
    first = api.send(gone, "gone")
    assert first.until("status") == {"state": "queued", "position": 1}
    second = api.send(next_, "next")
    assert second.until("status") == {"state": "queued", "position": 2}
    began = time.monotonic()
    api.stop(gone)
    assert second.until("status") == {"state": "queued", "position": 1}  # moved up at once
    assert time.monotonic() - began < 0.5
    assert first.end()["status"] == "stopped"
    api.stop(busy)
    second.until("token")
    assert a.chat_calls()[-1].prompt == "next"
    api.stop(next_)
    assert second.end()["status"] == "stopped" and holder.end()["status"] == "stopped"


@pytest.mark.timeout(30)
def test_prompts_to_hosts_the_probe_found_down_answer_at_once_without_a_connection_each(
    make_app, make_server
):
    # would hang: each prompt opening its own connection to a host whose probe already timed out,
    # and waiting there for its first token (a probe's work, once per prompt)
    with HungServer() as hung:
        app = make_app(upstreams=f"ollama={hung.url}", health_interval_s=0.05, first_token_timeout_s=1.0)
        api = Api(make_server(app).url)
        wait_for(lambda: host_state(api, hung) == "down", timeout=10, what="the probe to time out")
        before = hung.accepted
        began = time.monotonic()
        ends = [api.send(api.session(), "x").end() for _ in range(5)]
        took = time.monotonic() - began
        assert [e["error"]["code"] for e in ends] == ["upstream_unavailable"] * 5, ends
        assert took < 1.0, f"five prompts took {took:.2f} s"
        assert hung.accepted - before <= 2  # the background probe's own, not one per prompt
