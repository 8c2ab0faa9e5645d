"""The stream lifecycle under the real app and waitress: supersede, stop, disconnect.

Each hang test says what would hang. Upstream closes are read from the fake
Ollama's own record of the connection, so "closed" means the socket closed.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.conftest import HTTP_TIMEOUT, ROOT, Api, both_upstreams, clean_env, fd_count, free_port, wait_for
from tests.fake_ollama import Script, overlapped

# the three states a live answer can be in when it is stopped, superseded or abandoned
STATES = {
    "streaming": Script(tokens=1000, interval_s=0.01),
    "loading": Script(load_delay_s=60),
    "stalled": Script(tokens=50, stall_after=2),
}


@both_upstreams
def test_normal_flow_streams_tokens_then_one_end(api, fake):
    fake.script(tokens=5, interval_s=0.01)
    sid = api.session()
    sse = api.send(sid, "hi")
    start = sse.until("start")
    assert set(start) >= {"trace_id", "message_id", "model"} and start["model"] == "tiny"
    assert sse.end() == {"status": "completed"}
    assert sse.text() == "tok0 tok1 tok2 tok3 tok4 "
    user, answer = api.messages(sid)
    assert (user["role"], user["content"], user["status"]) == ("user", "hi", "sent")
    assert (answer["role"], answer["content"], answer["status"]) == ("assistant", sse.text(), "completed")
    assert answer["trace_id"] == start["trace_id"]


@both_upstreams
def test_the_end_carries_usage_and_timing_for_the_speed_shown(api, fake):
    fake.script(tokens=5, interval_s=0.01)
    sid = api.session()
    meta = api.send(sid, "hi").end_meta()
    timing = meta["timing"]
    assert meta["usage"]["completion_tokens"] == 5
    assert 0 < timing["first_token_ms"] <= timing["duration_ms"]
    assert api.messages(sid)[1]["meta"]["timing"] == timing  # stored: a reload shows the same speed


@both_upstreams
def test_second_prompt_supersedes_first(api, fake):
    fake.push(Script(tokens=1000, interval_s=0.02), Script(tokens=3))
    sid = api.session()
    first = api.send(sid, "first")
    first.until("token")
    second = api.send(sid, "second")
    assert second.end() == {"status": "completed"}
    assert first.end() == {"status": "superseded", "reason": "superseded"}
    old, new = fake.wait_for_calls(2)
    old.wait_closed(2)
    assert old.closed_by == "client" and not overlapped(old, new)
    statuses = [(m["role"], m["status"]) for m in api.messages(sid)]
    assert statuses == [
        ("user", "sent"),
        ("assistant", "superseded"),
        ("user", "sent"),
        ("assistant", "completed"),
    ]


@both_upstreams
@pytest.mark.parametrize("state", ["loading", "stalled"])
def test_supersede_while_upstream_silent_is_fast_and_closes_it(api, fake, state):
    # would hang (2 s per prompt, old socket left open) if cancel did not close the upstream
    silent = Script(load_delay_s=60) if state == "loading" else Script(tokens=50, stall_after=2)
    fake.push(silent, Script(tokens=2))
    sid = api.session()
    first = api.send(sid, "first")
    first.until("start")
    old = fake.wait_for_calls(1)[0]
    if state == "stalled":
        first.until("token")
    began = time.monotonic()
    second = api.send(sid, "second")
    assert second.end()["status"] == "completed"
    assert time.monotonic() - began < 1.0  # not the 2 s supersede timeout
    assert old.wait_closed(1) and old.closed_by == "client"
    assert first.end()["status"] == "superseded"


def test_two_sessions_supersede_without_touching_each_other(api, fake):
    fake.script(tokens=400, interval_s=0.01)
    a, b = api.session(), api.session()
    a1, b1 = api.send(a, "a1"), api.send(b, "b1")
    a1.until("token"), b1.until("token")
    fake.push(Script(tokens=2), Script(tokens=2))
    a2 = api.send(a, "a2")
    assert a2.end()["status"] == "completed"
    assert a1.end()["status"] == "superseded"
    b1_call = next(c for c in fake.chat_calls() if c.prompt == "b1")
    assert b1_call.closed_at is None  # b's stream still runs
    b1.until("token")
    b2 = api.send(b, "b2")
    assert b2.end()["status"] == "completed" and b1.end()["status"] == "superseded"
    assert a2.events[-1][1]["status"] == "completed"


def test_burst_of_simultaneous_prompts_never_overlaps_upstream(api, fake):
    # without the chain of waits, two upstream calls of one session run at once
    fake.key = lambda body: "one session"  # every call here is of one session
    fake.script(tokens=200, interval_s=0.005)
    sid = api.session()
    barrier = threading.Barrier(8)
    results = {}

    def send(i):
        barrier.wait(5)
        sse = api.send(sid, f"p{i}")
        results[f"p{i}"] = sse.end()["status"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(results.values())
    assert statuses == ["completed"] + ["superseded"] * 7
    # judged by the sockets, not by when the fake's threads ran: a loaded machine runs them late
    assert fake.overlaps == []
    calls = sorted(fake.chat_calls(), key=lambda c: c.opened_at)
    for earlier in calls[:-1]:
        assert earlier.closed_by == "client"  # cancelled by its supersede, not run to its end
    prompts = [c.prompt for c in calls]
    assert len(set(prompts)) == len(prompts)  # no prompt reached the model twice
    winner = next(p for p, status in results.items() if status == "completed")
    assert prompts[-1] == winner  # the last call is the answer that completed


@both_upstreams
@pytest.mark.parametrize("state", ["streaming", "loading", "stalled"])
def test_stop_closes_upstream_and_ends_stream(api, fake, state):
    # stop while the model loads would leave the worker in recv forever without the socket close
    fake.script(STATES[state])
    sid = api.session()
    sse = api.send(sid, "x")
    sse.until("start")
    call = fake.wait_for_calls(1)[0]
    if state != "loading":
        sse.until("token")
    assert api.stop(sid) == {"stopped": True}
    # the stream would run on for 10 s (streaming) or 60 s (loading, stalled) without the stop
    assert call.wait_closed(2) and call.closed_by == "client"
    assert sse.end() == {"status": "stopped", "reason": "stopped"}
    answer = api.messages(sid)[-1]
    assert answer["status"] == "stopped" and answer["content"] == sse.text()
    assert api.stop(sid) == {"stopped": False}  # harmless when nothing runs


@both_upstreams
@pytest.mark.parametrize("state", ["streaming", "loading", "stalled"])
def test_client_disconnect_cancels_upstream(jarvis_server, api, fake, state):
    # with no disconnect check the worker streams (or waits in recv) to the end
    fake.script(STATES[state])
    sid = api.session()
    sse = api.send(sid, "x")
    sse.until("start")
    call = fake.wait_for_calls(1)[0]
    sse.close()
    assert call.wait_closed(2) and call.closed_by == "client"
    wait_for(lambda: api.messages(sid)[-1]["status"] == "disconnected", what="answer stored as disconnected")
    wait_for(lambda: jarvis_server.app.extensions["jarvis"].registry.active() == 0, what="slot released")


@contextlib.contextmanager
def plain_waitress(fake, tmp_path, *options, **settings):
    """``python -m waitress [options] wsgi:app`` with JARVIS_* settings; yields an Api for it."""
    port = free_port()
    env = clean_env(
        JARVIS_OLLAMA_URL=fake.url,
        JARVIS_MODEL="tiny",
        JARVIS_BACKEND="ollama",
        JARVIS_DATABASE=str(tmp_path / "w.sqlite3"),
        **settings,
    )
    command = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "--threads=8", *options]
    proc = subprocess.Popen(
        [*command, "wsgi:app"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        api = Api(f"http://127.0.0.1:{port}")

        def up():
            try:
                return requests.get(api.url + "/healthz", timeout=HTTP_TIMEOUT).ok
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=15, what="waitress to answer")
        yield api
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize("lookahead", [0, 5])
def test_plain_waitress_notices_a_closed_tab_in_every_state(fake, tmp_path, lookahead):
    # with lookahead the disconnect probe sees it at the next poll (20 ms); without, only a write
    # reveals it: the heartbeat and the follow-up right after it, not three heartbeats
    heartbeat = 0.4
    bound = 0.25 if lookahead else heartbeat + 0.25  # ~25 ms and heartbeat + ~25 ms, with room for load
    with plain_waitress(
        fake, tmp_path, f"--channel-request-lookahead={lookahead}", JARVIS_HEARTBEAT=str(heartbeat)
    ) as api:
        for n, state in enumerate(STATES, start=1):
            fake.script(STATES[state])
            sid = api.session()
            sse = api.send(sid, "x")
            sse.until("start")
            call = fake.wait_for_calls(n)[-1]
            if state != "loading":
                sse.until("token")
            closed = time.monotonic()
            sse.close()
            assert call.wait_closed(3) and call.closed_by == "client"
            took = call.closed_at - closed
            assert took < bound, f"{state}: the upstream closed {took * 1000:.0f} ms after the tab"


def test_at_capacity_answers_503_while_stop_and_health_stay_fast(make_app, make_server, fake):
    fake.script(load_delay_s=60)
    app = make_app(max_streams=2)
    api = Api(make_server(app).url)
    sids = [api.session() for _ in range(3)]
    streams = [api.send(s, "x") for s in sids[:2]]
    for s in streams:
        s.until("start")
    third = api.send(sids[2], "x")
    assert third.status_code == 503 and int(third.response.headers["Retry-After"]) > 0
    assert third.json()["error"]["code"] == "at_capacity"
    # both would wait out the 60 s load for a free thread (past HTTP_TIMEOUT) without the reserve
    assert (
        requests.get(api.url + "/healthz", headers=api.headers, timeout=HTTP_TIMEOUT).json()["active_streams"]
        == 2
    )
    assert api.stop(sids[0]) == {"stopped": True}
    assert streams[0].end()["status"] == "stopped"
    # a session that holds a slot may still supersede its own stream
    again = api.send(sids[1], "y")
    assert again.status_code == 200
    again.until("start")
    assert streams[1].end()["status"] == "superseded"
    api.stop(sids[1])
    again.end()


@pytest.mark.slow  # 200 cycles
def test_hundreds_of_cycles_leave_no_threads_or_descriptors(api, fake):
    fake.script(tokens=3)
    sid = api.session()
    for _ in range(20):  # warm up pools and lazily created objects
        api.send(sid).end()
    threads, fds = threading.active_count(), fd_count()
    fake.script(tokens=50, interval_s=0.002)
    for i in range(200):
        sse = api.send(sid, f"p{i}")
        sse.until("token")
        if i % 3 == 0:
            api.stop(sid)
            sse.end()
        elif i % 3 == 1:
            sse.close()
        else:
            sse.end()
    wait_for(lambda: fake.active == 0, what="upstream calls closed")
    wait_for(lambda: threading.active_count() <= threads, what=f"threads back to {threads}")
    wait_for(lambda: fd_count() <= fds + 2, what=f"descriptors back to {fds}")


def test_wsgi_app_runs_under_python_m_waitress_from_environment(fake, tmp_path):
    with plain_waitress(fake, tmp_path) as api:
        sid = api.session()
        assert api.send(sid, "hi").end() == {"status": "completed"}
