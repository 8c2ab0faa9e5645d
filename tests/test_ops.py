"""Operating Jarvis: the command line, shutdown under load, metrics and JSON logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import (
    HTTP_TIMEOUT,
    ROOT,
    clean_env,
    free_port,
    jarvis_command,
    serve_process,
    wait_for,
)
from tests.fake_ollama import Script


def _ended(proc: subprocess.Popen) -> list[str]:
    """What a process of the test logged to stderr, once it has ended (killed if the test left it running)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
    err = proc.stderr.read() if proc.stderr else ""
    for pipe in (proc.stdout, proc.stderr):
        if pipe:
            pipe.close()
    return err.splitlines()


def _env(fake, tmp_path, **extra) -> dict:
    settings = dict(JARVIS_OLLAMA_URL=fake.url, JARVIS_MODEL="tiny", JARVIS_BACKEND="ollama")
    return clean_env(**{**settings, "JARVIS_DATABASE": str(tmp_path / "ops.sqlite3"), **extra})


_jarvis = jarvis_command


@pytest.mark.slow  # a server process of its own
@pytest.mark.timeout(60)
def test_serve_shuts_down_on_sigterm_with_live_answers_stored(fake, tmp_path):
    # a shutdown that waited for streams to end by themselves would hang here for 100 s
    fake.script(Script(tokens=10_000, interval_s=0.01))
    env = _env(fake, tmp_path, JARVIS_LOG_FORMAT="json", JARVIS_SHUTDOWN_TIMEOUT="5")
    proc, api = serve_process(env, stderr=subprocess.PIPE)
    try:
        sids = [api.session() for _ in range(3)]
        streams = [api.send(s, "x") for s in sids]
        for s in streams:
            s.until("token")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        for s in streams:
            assert s.end() == {"status": "stopped", "reason": "shutdown"}
    finally:
        lines = _ended(proc)
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(events) == len(lines)  # every log line is JSON
    cleanups = [e for e in events if e["event"] == "stream_cleanup"]
    assert len(cleanups) == 3 and all(e["status"] == "stopped" and e["trace_id"] for e in cleanups)
    assert any(e["event"] == "server_stopped" for e in events)
    assert fake.active == 0

    from jarvis.store import Store

    store = Store(env["JARVIS_DATABASE"])
    assert [store.get_session(s)["messages"][-1]["status"] for s in sids] == ["stopped"] * 3


def test_chat_streams_an_answer_to_stdout(make_app, make_server, fake):
    fake.script(Script(tokens=["Hello", ", ", "world"]))
    url = make_server(make_app()).url
    out = subprocess.run(
        _jarvis("chat", "--url", url, "hi"), capture_output=True, text=True, timeout=20, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Hello, world\n"
    assert out.stderr.startswith("session ")


def test_chat_says_when_an_answer_was_cut_off_by_its_length_limit(make_app, make_server, fake):
    fake.script(Script(tokens=["Once upon", " a time"], done_reason="length"))
    url = make_server(make_app()).url
    out = subprocess.run(
        _jarvis("chat", "--url", url, "a story"), capture_output=True, text=True, timeout=20, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Once upon a time\n" and "cut off" in out.stderr


def test_chat_reads_the_prompt_from_stdin(make_app, make_server, fake):
    url = make_server(make_app()).url
    out = subprocess.run(
        _jarvis("chat", "--url", url),
        input="from stdin",
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    assert out.returncode == 0 and fake.chat_calls()[0].prompt == "from stdin"


def test_chat_ctrl_c_stops_the_answer_and_exits_130(make_app, make_server, fake):
    fake.script(Script(tokens=10_000, interval_s=0.01))
    app = make_app()
    url = make_server(app).url
    proc = subprocess.Popen(
        _jarvis("chat", "--url", url, "long"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout.read(4) == "tok0"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        _ended(proc)
    call = fake.chat_calls()[0]
    assert call.wait_closed(2)
    store = app.extensions["jarvis"].store
    sid = store.list_sessions()[0]["id"]
    wait_for(
        lambda: store.get_session(sid)["messages"][-1]["status"] == "stopped", what="answer stored as stopped"
    )


def test_chat_fails_with_one_line_when_the_server_is_down():
    out = subprocess.run(
        _jarvis("chat", "--url", f"http://127.0.0.1:{free_port()}", "hi"),
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    assert (
        out.returncode == 1
        and out.stderr.startswith("jarvis: cannot reach Jarvis")
        and out.stderr.count("\n") == 1
    )


def test_check_passes_when_everything_answers(fake, tmp_path):
    out = subprocess.run(
        _jarvis("check"), env=_env(fake, tmp_path), capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 0, out.stdout
    assert out.stdout.count("ok ") == 5


def test_check_says_the_embedded_model_runs_in_this_process(fake, tmp_path):
    from jarvis.upstream import local

    if not local.available():
        pytest.skip("the embedded model is not installed")
    env = _env(fake, tmp_path, JARVIS_BACKEND="local", JARVIS_MODEL="")
    out = subprocess.run(_jarvis("check"), env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout
    assert "ok   the embedded model (in this process) answers" in out.stdout, out.stdout


@pytest.mark.parametrize(
    "extra, expect",
    [
        ({"JARVIS_MODEL": "missing"}, "ollama pull missing"),
        ({"JARVIS_OLLAMA_URL": "http://127.0.0.1:9"}, "ollama serve"),
        ({"JARVIS_DATABASE": "/proc/nope/jarvis.sqlite3"}, "JARVIS_DATABASE"),
        ({"JARVIS_IDLE_TIMEOUT": "-1"}, "JARVIS_IDLE_TIMEOUT"),
    ],
)
def test_check_reports_each_failure_with_a_fix(fake, tmp_path, extra, expect):
    out = subprocess.run(
        _jarvis("check"), env=_env(fake, tmp_path, **extra), capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 1 and "FAIL" in out.stdout and expect in out.stdout, out.stdout


def test_metrics_move_as_streams_run(api, fake):
    fake.push(Script(tokens=1000, interval_s=0.01), Script(tokens=3), Script(status=500))
    sid, first = api.answering("a")
    api.send(sid, "b").end()
    api.send(sid, "c").end()
    first.end()
    text = requests.get(api.url + "/metrics", headers=api.headers, timeout=HTTP_TIMEOUT).text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['jarvis_streams_ended_total{status="completed"}'] == 1
    assert samples['jarvis_streams_ended_total{status="superseded"}'] == 1
    assert samples['jarvis_streams_ended_total{status="failed"}'] == 1
    assert samples['jarvis_upstream_errors_total{code="upstream_http_error"}'] == 1
    assert samples["jarvis_supersede_wait_seconds_count"] >= 1
    assert samples["jarvis_cancel_to_upstream_closed_seconds_count"] >= 1
    assert samples["jarvis_time_to_first_token_seconds_count"] == 2
    assert samples["jarvis_tokens_streamed_total"] >= 4
    assert samples["jarvis_live_streams"] == 0


def test_version_names_the_installed_package():
    from importlib import metadata

    out = subprocess.run(
        [sys.executable, "-m", "jarvis.cli", "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and out.stdout.strip() == f"jarvis {metadata.version('jarvis')}"


@pytest.mark.slow  # a server process of its own
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["upstream", "local"])
def test_serve_exits_in_time_on_sigterm_with_a_worker_stuck_in_a_blocking_call(tmp_path, backend):
    # the cleanup's join outlasts the shutdown deadline, so shutdown leaves the stream: the process
    # would not exit if the disconnect watcher polled on for it or the stuck worker were waited
    # for, and would overrun if the model's close (or the event loop) waited outside the deadline
    env = clean_env(
        JARVIS_DATABASE=str(tmp_path / "stuck.sqlite3"),
        JARVIS_INSTANCE_DIR=str(tmp_path / "instance"),
        JARVIS_SHUTDOWN_TIMEOUT="2",
        JARVIS_CANCEL_TIMEOUT="5",
    )
    proc, api = serve_process(env, launcher=("tests.stuck_serve", backend))
    try:
        sid, sse = api.answering("x")
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        took = time.monotonic() - began
        assert proc.returncode == 0
        assert took <= 2 + 1, f"exit took {took:.2f} s, past JARVIS_SHUTDOWN_TIMEOUT + 1 s"
    finally:
        _ended(proc)


@pytest.mark.slow  # a server process of its own
@pytest.mark.timeout(60)
def test_serve_shutdown_ends_a_kept_answer_with_its_status_stored(fake, tmp_path):
    # a keeper that shutdown did not end would hold the process for the whole grace (30 s), or
    # die with it mid-write and leave the answer "streaming" until the next start
    fake.script(Script(tokens=10, stall_after=2))
    grace = {"JARVIS_DETACH_GRACE": "30", "JARVIS_SHUTDOWN_TIMEOUT": "5"}
    env = _env(fake, tmp_path, JARVIS_LOG_FORMAT="json", **grace)
    proc, api = serve_process(env, stderr=subprocess.PIPE)
    try:
        sid, first = api.answering("keep me")
        first.close()  # the tab closes: a keeper drives the answer for the grace
        call = fake.wait_for_calls(1)[0]
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert call.wait_closed(2) and call.closed_at - began < 1.0
    finally:
        lines = _ended(proc)
    events = [json.loads(line) for line in lines if line.startswith("{")]
    cleanups = [e for e in events if e["event"] == "stream_cleanup"]
    assert [e["status"] for e in cleanups] == ["stopped"]
    stopped = next(i for i, e in enumerate(events) if e["event"] == "server_stopped")
    assert stopped > events.index(cleanups[0]), "the server stopped before the kept answer ended"
    assert not [e for e in events if e["event"] == "shutdown_keeper_left"]

    from jarvis.store import Store

    answer = Store(env["JARVIS_DATABASE"]).get_session(sid)["messages"][-1]
    assert (answer["status"], answer["content"]) == ("stopped", "tok0 tok1 ")
