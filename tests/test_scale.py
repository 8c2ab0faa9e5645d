"""Several Jarvis processes sharing one Redis (JARVIS_REDIS_URL) and one SQLite file.

Two ``jarvis serve`` processes, A and B, answer from one fake Ollama; requests for one
session go to either. The fake records when each upstream call opened and closed and
whether a call arrived while an older one of the session was still open (``overlaps``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest
import requests
from flask import Flask

from jarvis.store import Store
from jarvis.web.accounts import Accounts
from tests.conftest import (
    HTTP_TIMEOUT,
    ROOT,
    Api,
    clean_env,
    free_port,
    serve_process,
    stop_process,
    wait_for,
)
from tests.fake_ollama import Script, overlapped
from tests.redis_server import REDIS_SERVER, RedisServer

redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install jarvis[scale])")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
two_processes = pytest.mark.slow  # each starts server processes of its own

LEASE_TTL_S = 1.0  # short, so that a dead owner's lease expires within a test


@pytest.fixture
def redis_server(tmp_path):
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(free_port(), str(folder)).start()
    yield server
    server.stop()


@dataclass
class Pair:
    a: Api
    b: Api
    proc_a: subprocess.Popen
    proc_b: subprocess.Popen


@pytest.fixture
def pair(fake, redis_server, tmp_path, database):
    """Two ``jarvis serve`` processes sharing one database, one Redis and the fake Ollama."""
    procs = []

    def start(name: str):
        env = clean_env(
            JARVIS_OLLAMA_URL=fake.url,
            JARVIS_BACKEND="ollama",
            JARVIS_MODEL="tiny",
            JARVIS_DATABASE=database,
            JARVIS_INSTANCE_DIR=str(tmp_path / f"instance-{name}"),
            JARVIS_REDIS_URL=redis_server.url,
            JARVIS_LEASE_TTL=str(LEASE_TTL_S),
            JARVIS_HEARTBEAT="0.2",
            JARVIS_FIRST_TOKEN_TIMEOUT="30",
            JARVIS_IDLE_TIMEOUT="30",
        )
        log = open(tmp_path / f"serve-{name}.log", "w")
        proc, api = serve_process(env, stderr=log)
        log.close()
        procs.append(proc)
        return proc, Api(api.url)

    proc_a, a = start("a")
    proc_b, b = start("b")
    fake.key = lambda body: "the session"  # every test here uses one session at a time
    for api in (a, b):  # both hear the control channel before the test begins
        wait_for(lambda api=api: health(api).get("coordination_ok"), timeout=5, what="subscribed")
    yield Pair(a, b, proc_a, proc_b)
    for proc in procs:
        stop_process(proc)


def health(api: Api) -> dict:
    return requests.get(api.url + "/healthz", headers=api.headers, timeout=HTTP_TIMEOUT).json()


def assert_one_call_at_a_time(fake, n: int) -> None:
    """The session's upstream calls never overlapped: each opened after the one before had closed."""
    calls = fake.wait_for_calls(n)
    fake.wait_idle()
    assert fake.overlaps == [], [(old.prompt, new.prompt) for old, new in fake.overlaps]
    for old, new in zip(calls[:-1], calls[1:], strict=True):
        assert not overlapped(old, new), (old.prompt, new.prompt)


@two_processes
@pytest.mark.parametrize(
    "state, script",
    [
        ("streaming", Script(tokens=400, interval_s=0.02)),
        ("stalled", Script(tokens=5, stall_after=2)),
        ("loading", Script(load_delay_s=60)),
    ],
)
def test_prompt_at_b_supersedes_a_answer_at_a(pair, fake, state, script):
    # would hang: A's upstream left open while it stalls or loads, B waiting on it
    fake.push(script, Script(tokens=3))
    session = pair.a.session()
    first = pair.a.send(session, "first")
    if state == "loading":
        fake.wait_for_calls(1)
    else:
        first.until("token")
    started = time.monotonic()
    second = pair.b.send(session, "second")
    assert first.end()["status"] == "superseded"
    assert second.end()["status"] == "completed"
    assert second.text() == "tok0 tok1 tok2 "
    assert time.monotonic() - started < 2.0
    assert_one_call_at_a_time(fake, 2)
    assert [c.prompt for c in fake.chat_calls()] == ["first", "second"]
    statuses = [m.get("status") for m in pair.b.messages(session) if m["role"] == "assistant"]
    assert statuses == ["superseded", "completed"]


@two_processes
def test_stop_at_b_ends_a_answer_and_closes_its_upstream(pair, fake):
    fake.script(tokens=5, stall_after=2)
    session, answer = pair.a.answering()
    assert pair.b.stop(session) == {"stopped": True}
    assert answer.end()["status"] == "stopped"
    assert fake.chat_calls()[0].wait_closed(1.0)


@two_processes
def test_delete_at_b_ends_a_answer(pair, fake):
    fake.script(tokens=5, stall_after=2)
    session, answer = pair.a.answering()
    r = requests.delete(f"{pair.b.url}/api/sessions/{session}", headers=pair.b.headers, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    assert answer.end()["status"] == "stopped"
    assert fake.chat_calls()[0].wait_closed(1.0)


@two_processes
def test_prompts_alternating_between_processes_never_overlap_upstream(pair, fake):
    fake.script(tokens=50, interval_s=0.01)
    session = pair.a.session()
    answers = []
    for i in range(6):
        api = (pair.a, pair.b)[i % 2]
        answers.append(api.send(session, f"prompt {i}"))
        answers[-1].until("start")
    ends = [a.end()["status"] for a in answers]
    assert ends[-1] == "completed"
    assert set(ends[:-1]) <= {"superseded"}, ends
    assert fake.overlaps == []


@two_processes
def test_dead_owner_lease_expires_and_the_next_prompt_proceeds(pair, fake):
    fake.push(Script(tokens=5, stall_after=2), Script(tokens=3))
    session, answer = pair.a.answering("first")

    def checkpointed():
        return [m for m in pair.b.messages(session) if m["role"] == "assistant" and m["content"]]

    wait_for(checkpointed, timeout=5, what="A to save the text so far")
    pair.proc_a.send_signal(signal.SIGKILL)
    pair.proc_a.wait(5)
    killed = time.monotonic()
    second = pair.b.send(session, "second")
    assert second.end()["status"] == "completed"
    opened = fake.chat_calls()[1].opened_at
    assert opened - killed <= LEASE_TTL_S + 1.0
    answer.close()
    first_answer = [m for m in pair.b.messages(session) if m["role"] == "assistant"][0]
    assert (first_answer["status"], first_answer["content"]) == ("interrupted", "tok0 tok1 ")


@two_processes
def test_a_prompt_after_a_dead_owners_lease_expired_marks_its_answer_interrupted(pair, fake, redis_server):
    # the lease is gone by then: only the record of who took it last, never given back, names the
    # dead process's answer (without it the answer stayed streaming until a process started)
    fake.push(Script(tokens=5, stall_after=2), Script(tokens=3))
    session, answer = pair.a.answering("first")
    wait_for(
        lambda: [m for m in pair.b.messages(session) if m["role"] == "assistant" and m["content"]],
        what="A to save the text so far",
    )
    pair.proc_a.send_signal(signal.SIGKILL)
    pair.proc_a.wait(5)
    redis = redis_server.client()
    lease = f"jarvis:lease:{session}"
    wait_for(lambda: not redis.exists(lease), timeout=LEASE_TTL_S + 2, what="the lease to expire")
    assert pair.b.send(session, "second").end()["status"] == "completed"
    answer.close()
    first_answer = [m for m in pair.b.messages(session) if m["role"] == "assistant"][0]
    assert (first_answer["status"], first_answer["content"]) == ("interrupted", "tok0 tok1 ")
    assert not redis.exists(f"jarvis:owner:{session}")  # the second answer gave its lease back


@two_processes
def test_redis_down_refuses_new_prompts_at_once_while_a_live_answer_completes(pair, fake, redis_server):
    fake.push(Script(tokens=30, interval_s=0.05), Script(tokens=3))
    session, other = pair.a.session(), pair.b.session()
    answer = pair.a.send(session, "live")
    answer.until("token")
    redis_server.stop()
    started = time.monotonic()
    refused = pair.b.send(other, "new")
    took = time.monotonic() - started
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "coordination_unavailable"
    assert refused.response.headers["Retry-After"]
    assert took < 0.5
    assert answer.end()["status"] == "completed"
    assert answer.text() == "".join(f"tok{i} " for i in range(30))
    wait_for(lambda: health(pair.a)["coordination_ok"] is False, timeout=2, what="healthz to say so")
    assert health(pair.a)["coordination"]["error"]
    redis_server.start()  # back on its port: the processes resubscribe and serve again
    wait_for(lambda: health(pair.b)["coordination_ok"], timeout=5, what="B to resubscribe")
    assert pair.b.send(other, "again").end()["status"] == "completed"


@two_processes
def test_an_answer_costs_a_few_redis_commands_not_one_per_token(pair, fake, redis_server):
    fake.script(tokens=200)
    session = pair.a.session()
    for api in (pair.a, pair.b):  # scripts loaded, connections opened
        assert api.send(session, "warm up").end()["status"] == "completed"
    before = redis_server.commands()
    assert pair.a.send(session, "counted").end()["status"] == "completed"
    after = redis_server.commands()
    spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    spent.pop("pexpire", None)  # the processes' heartbeats: a clock's, not the answer's
    print("redis commands for one answer of 200 tokens:", spent)
    # three round trips: the claim (a script), the lease (SET NX), the release (a script);
    # the scripts' own commands (time, get, set, del, publish) count in the stats too
    assert spent.get("evalsha") == 2, spent
    assert sum(n for k, n in spent.items() if k != "hello") <= 13, spent


@two_processes
def test_without_redis_url_redis_is_never_imported(fake, tmp_path):
    env = clean_env(JARVIS_OLLAMA_URL=fake.url, JARVIS_BACKEND="ollama", JARVIS_INSTANCE_DIR=str(tmp_path))
    code = (
        "import sys, jarvis; jarvis.create_app().extensions['jarvis'].shutdown(2); "
        "print('redis' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


# Two apps in this process, each with its own registry and coordinator, stand for two processes:
# the same protocol over the same Redis, without the cost of starting servers.


def apps_on(make_app, make_server, redis_server, n: int = 2, **overrides) -> list[tuple[Flask, Api]]:
    """``n`` (app, Api) pairs on one Redis and one SQLite file, each subscribed."""
    made = []
    for _ in range(n):
        app = make_app(redis_url=redis_server.url, **{"lease_ttl_s": LEASE_TTL_S, **overrides})
        api = Api(make_server(app).url)
        wait_for(lambda api=api: health(api).get("coordination_ok"), timeout=5, what="subscribed")
        made.append((app, api))
    return made


@pytest.fixture
def two_apps(make_app, make_server, redis_server):
    made = apps_on(make_app, make_server, redis_server)
    return [app for app, _ in made], [api for _, api in made]


@pytest.mark.parametrize("script", [Script(tokens=400, interval_s=0.02), Script(tokens=5, stall_after=2)])
def test_a_prompt_in_one_app_supersedes_the_answer_in_the_other(two_apps, fake, script):
    # would hang: the first answer's upstream left open while it stalls, the second waiting on it
    (_, _), (a, b) = two_apps
    fake.key = lambda body: "the session"
    fake.push(script, Script(tokens=3))
    session, first = a.answering("first")
    second = b.send(session, "second")
    assert first.end()["status"] == "superseded"
    assert second.end()["status"] == "completed"
    assert_one_call_at_a_time(fake, 2)


def test_stop_in_one_app_reaches_the_answer_in_the_other(two_apps, fake):
    (_, _), (a, b) = two_apps
    fake.script(tokens=5, stall_after=2)
    session, answer = a.answering()
    assert b.stop(session) == {"stopped": True}
    assert answer.end()["status"] == "stopped"
    assert fake.chat_calls()[0].wait_closed(1.0)


def test_a_late_cancel_never_ends_a_newer_prompt(two_apps, fake, redis_server):
    (app, _), (a, _) = two_apps
    fake.script(tokens=30, interval_s=0.02)
    session, answer = a.answering()
    (stream,) = app.extensions["jarvis"].registry.live()
    with redis_server.client() as r:  # a cancel sent by a prompt that came before this one
        r.publish("jarvis:control", f"cancel\t{session}\tsuperseded\tother\t{stream.lease.ticket - 1}")
    assert answer.end()["status"] == "completed"


def test_an_answer_whose_lease_another_owner_took_ends(two_apps, fake, redis_server):
    (_, _), (a, _) = two_apps
    fake.script(tokens=5, stall_after=2)
    session, answer = a.answering()
    with redis_server.client() as r:
        r.set(f"jarvis:lease:{session}", "elsewhere trace 1", px=60_000)
    assert answer.end()["status"] == "superseded"  # at the next renewal, a third of the TTL


def test_a_live_answer_keeps_its_lease_past_the_ttl(two_apps, fake, redis_server):
    (app, _), (a, _) = two_apps
    fake.script(tokens=5, stall_after=2)
    session, answer = a.answering()
    (stream,) = app.extensions["jarvis"].registry.live()
    with redis_server.client() as r:
        deadline = time.monotonic() + 3 * LEASE_TTL_S
        while time.monotonic() < deadline:  # renewed every third of the TTL, never let lapse
            assert r.get(f"jarvis:lease:{session}") == stream.lease.value
            threading.Event().wait(0.05)
        a.stop(session)
        assert answer.end()["status"] == "stopped"
        wait_for(lambda: r.get(f"jarvis:lease:{session}") is None, timeout=1, what="the lease released")


def test_unreachable_redis_refuses_prompts_at_once(make_app, make_server, fake):
    app = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    api = Api(make_server(app).url)
    session = api.session()
    started = time.monotonic()
    refused = api.send(session, "hello")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "coordination_unavailable"
    assert time.monotonic() - started < 0.5
    assert health(api)["coordination_ok"] is False
    assert fake.chat_calls() == []


def test_a_prompt_waits_for_a_lease_held_elsewhere_until_it_expires(two_apps, fake, redis_server):
    # an owner that lives but cannot hear the cancel: its lease runs out on its own
    (_, _), (a, _) = two_apps
    session = a.session()
    with redis_server.client() as r:
        r.set("jarvis:alive:elsewhere", "1", px=5000)  # its heartbeat: a process alive
        r.set(f"jarvis:lease:{session}", "elsewhere trace 1", px=500)
    sent = time.monotonic()
    answer = a.send(session, "hello")
    assert answer.end()["status"] == "completed"
    assert fake.chat_calls()[0].opened_at - sent >= 0.4  # not before the lease expired


def test_a_lease_a_live_process_holds_past_the_deadline_is_taken_over(
    make_app, make_server, fake, redis_server
):
    # the policy of one process: a predecessor still there at the supersede deadline is passed
    app = make_app(redis_url=redis_server.url, supersede_timeout_s=0.3)
    api = Api(make_server(app).url)
    wait_for(lambda: health(api).get("coordination_ok"), timeout=5, what="subscribed")
    session = api.session()
    with redis_server.client() as r:
        r.set("jarvis:alive:elsewhere", "1", px=60_000)
        r.set(f"jarvis:lease:{session}", "elsewhere trace 1", px=60_000)
        sent = time.monotonic()
        assert api.send(session, "hello").end()["status"] == "completed"
        assert 0.3 <= fake.chat_calls()[0].opened_at - sent < 0.8
        assert r.get(f"jarvis:lease:{session}") is None  # taken over, then given back


def test_prompts_sent_at_once_to_both_apps_leave_one_answer(two_apps, fake):
    (_, _), (a, b) = two_apps
    fake.key = lambda body: "the session"
    fake.script(tokens=20, interval_s=0.01)
    session = a.session()
    ends: list[dict] = []

    def send(api: Api, n: int) -> None:
        ends.append(api.send(session, f"prompt {n}").end())

    threads = [threading.Thread(target=send, args=((a, b)[n % 2], n)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    statuses = sorted(e["status"] for e in ends)
    assert statuses == ["completed"] + ["superseded"] * 5, ends
    fake.wait_idle()
    assert fake.overlaps == []


def test_a_hung_redis_refuses_new_prompts_within_its_timeout_while_a_live_answer_completes(
    two_apps, fake, redis_server
):
    # would hang: a prompt, or the live answer's renewal and release, waiting on a Redis that never replies
    (_, _), (a, b) = two_apps
    fake.push(Script(tokens=30, interval_s=0.05))
    session, other = a.session(), b.session()
    answer = a.send(session, "live")
    answer.until("token")
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        refused = b.send(other, "new")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "coordination_unavailable"
        assert time.monotonic() - started < 1.5  # JARVIS_REDIS_TIMEOUT is 0.5 s
        assert answer.end()["status"] == "completed"
        assert answer.text() == "".join(f"tok{i} " for i in range(30))
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)


def test_a_prompt_older_than_the_lease_holder_ends_superseded_without_calling_the_model(
    two_apps, fake, redis_server
):
    # the newer prompt's cancel reached this process before the older stream was registered
    (_, _), (a, _) = two_apps
    session = a.session()
    with redis_server.client() as r:
        r.set(f"jarvis:lease:{session}", f"elsewhere trace {10**17}", px=60_000)  # a ticket from the future
    assert a.send(session, "hello").end()["status"] == "superseded"
    assert fake.chat_calls() == []


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config_of_the_docs(listen: int, backends: list[int]) -> str:
    """The nginx block of docs/scaling.md, verbatim but for the ports and TLS."""
    doc = open(os.path.join(ROOT, "docs", "scaling.md")).read()
    block = doc.split("```nginx\n", 1)[1].split("```", 1)[0]
    for documented, port in zip(("8001", "8002"), backends, strict=True):
        block = block.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{port}")
    return block.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen};")


@two_processes
@pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")
def test_two_processes_behind_the_documented_nginx_block(fake, redis_server, tmp_path):
    database = str(tmp_path / "shared.sqlite3")
    store = Store(database)
    accounts = Accounts(store)
    accounts.add("ann", "correct horse battery")
    token = accounts.create_token("ann", "tests")
    store.close()
    procs, ports = [], []
    try:
        for name in "ab":
            env = clean_env(
                JARVIS_OLLAMA_URL=fake.url, JARVIS_BACKEND="ollama", JARVIS_MODEL="tiny",
                JARVIS_DATABASE=database, JARVIS_INSTANCE_DIR=str(tmp_path / f"instance-{name}"),
                JARVIS_REDIS_URL=redis_server.url, JARVIS_TRUSTED_PROXIES="127.0.0.1",
                JARVIS_SECRET_KEY="k" * 32, JARVIS_HEARTBEAT="0.2",
            )  # fmt: skip
            with open(tmp_path / f"serve-{name}.log", "w") as log:
                proc, api = serve_process(env, stderr=log)
            procs.append(proc)
            ports.append(int(api.url.rsplit(":", 1)[1]))
        listen = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            f"daemon off; master_process off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/nginx.log;\n"
            f"events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {tmp_path};\n"
            f" proxy_temp_path {tmp_path};\n{nginx_config_of_the_docs(listen, ports)}}}\n"
        )
        procs.append(
            subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.DEVNULL)
        )
        api = Api(f"http://127.0.0.1:{listen}", token)

        def up() -> bool:
            try:
                return requests.get(api.url + "/healthz", timeout=HTTP_TIMEOUT).json()["coordination_ok"]
            except (requests.ConnectionError, ValueError):
                return False

        wait_for(up, timeout=10, what="nginx and both processes")
        fake.key = lambda body: "the session"
        fake.script(tokens=5, stall_after=2)
        session = api.session()
        answers = []
        for n in range(4):  # round robin: each prompt lands on the other process than the one before
            answers.append(api.send(session, f"prompt {n}"))
            answers[-1].until("token")
        readers = [api.attach(session) for _ in range(2)]  # a reload at each process
        assert [r.status_code for r in readers] == [200, 200]
        for r in readers:
            r.until("token")
        assert api.stop(session) == {"stopped": True}
        assert [a.end()["status"] for a in answers] == ["superseded"] * 3 + ["stopped"]
        assert [r.end()["status"] for r in readers] == ["stopped"] * 2
        assert [r.events for r in readers] == [answers[-1].events] * 2  # the same answer at both
        assert_one_call_at_a_time(fake, 4)
        for name in "ab":  # both processes answered some of them
            assert "stream_start" in (tmp_path / f"serve-{name}.log").read_text()
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def assistant_statuses(store: Store, session: str) -> list[str]:
    return [m["status"] for m in store.get_session(session)["messages"] if m["role"] == "assistant"]


def test_an_app_starting_spares_the_answer_another_app_streams(make_app, make_server, fake, redis_server):
    # the second app starts on the same database while the first app's answer streams
    first = make_app(redis_url=redis_server.url, lease_ttl_s=LEASE_TTL_S, flush_interval_s=30)
    a = Api(make_server(first).url)
    wait_for(lambda: health(a).get("coordination_ok"), timeout=5, what="subscribed")
    fake.script(tokens=5, stall_after=2)
    live, crashed = a.session(), a.session()
    store = first.extensions["jarvis"].store
    _, left = store.add_exchange(crashed, "hi", "a dead process's answer", "tiny")  # no lease: its owner died
    answer = a.send(live, "hello")
    answer.until("token")
    second = make_app(redis_url=redis_server.url, lease_ttl_s=LEASE_TTL_S, flush_interval_s=30)
    assert assistant_statuses(store, live) == ["streaming"]
    assert assistant_statuses(store, crashed) == ["interrupted"]
    assert a.stop(live) == {"stopped": True}
    assert answer.end()["status"] == "stopped"
    assert assistant_statuses(second.extensions["jarvis"].store, live) == ["stopped"]


def test_an_app_starting_while_redis_is_down_marks_nothing(make_app, fake, tmp_path):
    store = Store(str(tmp_path / "jarvis.sqlite3"))
    session = store.create_session()["id"]
    store.add_exchange(session, "hi", "t1", "tiny")  # live elsewhere, or not: without Redis nobody can tell
    make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert assistant_statuses(store, session) == ["streaming"]
    store.close()


def serve(name: str, fake, redis_server, tmp_path, **env) -> tuple[subprocess.Popen, Api]:
    """One ``jarvis serve`` process on the shared SQLite file and Redis; its log in serve-NAME.log."""
    env = clean_env(
        JARVIS_OLLAMA_URL=fake.url, JARVIS_BACKEND="ollama", JARVIS_MODEL="tiny",
        JARVIS_DATABASE=str(tmp_path / "shared.sqlite3"), JARVIS_INSTANCE_DIR=str(tmp_path / f"i-{name}"),
        JARVIS_REDIS_URL=redis_server.url, JARVIS_LEASE_TTL=str(LEASE_TTL_S), JARVIS_HEARTBEAT="0.2", **env,
    )  # fmt: skip
    with open(tmp_path / f"serve-{name}.log", "w") as log:
        proc, api = serve_process(env, stderr=log)
    wait_for(lambda: health(api).get("coordination_ok"), timeout=5, what=f"{name} subscribed")
    return proc, api


@two_processes
def test_a_process_starting_spares_the_answer_another_process_streams(fake, redis_server, tmp_path):
    procs = []

    def start(name: str):
        # no checkpoint mid-answer puts back a status that recovery changed
        proc, api = serve(name, fake, redis_server, tmp_path, JARVIS_FLUSH_INTERVAL="60")
        procs.append(proc)
        return Api(api.url)

    try:
        a = start("a")
        fake.script(tokens=120, interval_s=0.04)  # about 5 s: B starts meanwhile
        session, answer = a.answering()
        b = start("b")  # B starts while A streams
        store = Store(str(tmp_path / "shared.sqlite3"))
        try:
            assert assistant_statuses(store, session) == ["streaming"]
            assert answer.end()["status"] == "completed"
            assert assistant_statuses(store, session) == ["completed"]
        finally:
            store.close()
        assert answer.text() == "".join(f"tok{i} " for i in range(120))
        assert b.messages(session)[-1]["status"] == "completed"
        log_b = (tmp_path / "serve-b.log").read_text()
        assert "recovered_interrupted" in log_b and "skipped_live=1" in log_b, log_b
    finally:
        for proc in procs:
            stop_process(proc)


# limits counted in Redis: an account's streams and its sign-in attempts, the same at every process

PASSWORD = "correct horse battery"


def admitted(api: Api, headers: dict) -> bool:
    """Whether a new answer of this account starts (it is closed at once)."""
    _, r = start_answer(api, headers)
    r.close()
    return r.status_code == 200


def start_answer(api: Api, headers: dict, session: str | None = None) -> tuple[str, requests.Response]:
    session = (
        session
        or requests.post(api.url + "/api/sessions", headers=headers, timeout=HTTP_TIMEOUT).json()["id"]
    )
    r = requests.post(
        f"{api.url}/api/sessions/{session}/messages",
        json={"content": "x"}, headers=headers, stream=True, timeout=HTTP_TIMEOUT,
    )  # fmt: skip
    return session, r


def test_an_account_stream_limit_counts_its_answers_in_every_app(make_app, make_server, fake, redis_server):
    fake.script(Script(load_delay_s=60))
    apps = [
        make_app(redis_url=redis_server.url, lease_ttl_s=LEASE_TTL_S, max_streams_per_user=1) for _ in "ab"
    ]
    a, b = (Api(make_server(app).url, token=None) for app in apps)
    for api in (a, b):
        wait_for(lambda api=api: health(api).get("coordination_ok"), timeout=5, what="subscribed")
    accounts = apps[0].extensions["jarvis"].accounts
    accounts.add("ann", PASSWORD)
    accounts.add("bob", PASSWORD)
    ann = {"Authorization": "Bearer " + accounts.create_token("ann")}
    bob = {"Authorization": "Bearer " + accounts.create_token("bob")}
    session, first = start_answer(a, ann)
    assert first.status_code == 200
    _, second = start_answer(b, ann)  # another session of the same account, at the other app
    assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_streams"
    _, bobs = start_answer(b, bob)
    assert bobs.status_code == 200  # another account is not held up
    _, again = start_answer(b, ann, session)  # a prompt in the streaming session supersedes: no new slot
    assert again.status_code == 200
    stop = requests.post(f"{b.url}/api/sessions/{session}/stop", headers=ann, timeout=HTTP_TIMEOUT)
    assert stop.json() == {"stopped": True}
    wait_for(lambda: all(app.extensions["jarvis"].registry.count_owned(1) == 0 for app in apps), timeout=5,
             what="ann's answers to end")  # fmt: skip
    _, third = start_answer(a, ann)  # freed everywhere once the answers ended
    assert third.status_code == 200
    for r in (first, second, bobs, again, third):
        r.close()


def test_a_stream_counted_by_a_process_that_died_stops_counting_within_the_ttl(
    make_app, make_server, fake, redis_server
):
    app = make_app(redis_url=redis_server.url, lease_ttl_s=LEASE_TTL_S, max_streams_per_user=1)
    api = Api(make_server(app).url, token=None)
    wait_for(lambda: health(api).get("coordination_ok"), timeout=5, what="subscribed")
    accounts = app.extensions["jarvis"].accounts
    accounts.add("ann", PASSWORD)
    ann = {"Authorization": "Bearer " + accounts.create_token("ann")}
    with redis_server.client() as r:  # what a process killed mid-answer leaves: a member nobody renews
        seconds, micros = r.time()
        r.zadd("jarvis:streams:1", {"elsewhere\tdead:1 trace": seconds * 1000 + micros // 1000 + 500})
    _, refused = start_answer(api, ann)
    assert refused.status_code == 429
    refused.close()
    wait_for(lambda: admitted(api, ann), timeout=3, what="the dead member to expire")


def test_sign_in_attempts_count_across_apps(make_app, redis_server):
    apps = [make_app(redis_url=redis_server.url) for _ in "ab"]
    apps[0].extensions["jarvis"].accounts.add("ann", PASSWORD)
    clients = [app.test_client() for app in apps]
    attacker = {"REMOTE_ADDR": "192.0.2.66"}
    wrong = {"name": "ann", "password": "wrong-password"}
    for i in range(10):  # five at each
        assert clients[i % 2].post("/login", json=wrong, environ_base=attacker).status_code == 401
    for client in clients:
        r = client.post("/login", json={"name": "ann", "password": PASSWORD}, environ_base=attacker)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert clients[1].post("/login", json={"name": "ann", "password": PASSWORD}).status_code == 200


def test_sign_in_goes_on_while_redis_is_away(make_app):
    app = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    app.extensions["jarvis"].accounts.add("ann", PASSWORD)
    client = app.test_client()
    started = time.monotonic()
    assert client.post("/login", json={"name": "ann", "password": PASSWORD}).status_code == 200
    assert time.monotonic() - started < 2.0
    attacker = {"REMOTE_ADDR": "192.0.2.66"}
    for _ in range(10):  # counted in this process's memory meanwhile
        client.post("/login", json={"name": "ann", "password": "wrong-password"}, environ_base=attacker)
    r = client.post("/login", json={"name": "ann", "password": PASSWORD}, environ_base=attacker)
    assert r.status_code == 429


@two_processes
def test_an_account_stream_limit_holds_across_two_processes(fake, redis_server, tmp_path):
    store = Store(str(tmp_path / "shared.sqlite3"))
    accounts = Accounts(store)
    accounts.add("ann", PASSWORD)
    ann = {"Authorization": "Bearer " + accounts.create_token("ann", "tests")}
    store.close()
    fake.script(Script(load_delay_s=60))
    procs = []
    try:
        apis = []
        for name in "ab":
            proc, api = serve(name, fake, redis_server, tmp_path, JARVIS_MAX_STREAMS_PER_USER="1")
            procs.append(proc)
            apis.append(Api(api.url, token=None))
        a, b = apis
        session, first = start_answer(a, ann)
        assert first.status_code == 200
        _, second = start_answer(b, ann)
        assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_streams"
        stop = requests.post(f"{a.url}/api/sessions/{session}/stop", headers=ann, timeout=HTTP_TIMEOUT)
        assert stop.json() == {"stopped": True}
        first.close()
        wait_for(lambda: admitted(b, ann), timeout=3, what="ann's slot freed")
        for r in (first, second):
            r.close()
    finally:
        for proc in procs:
            stop_process(proc)
