"""Faults of several processes sharing Redis: refused prompts, dead owners, stuck workers, bad input.

Two ``jarvis serve`` processes where a process must die or keep its own limits; elsewhere two apps
in this process, each with its own registry and coordinator, stand for two processes.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
import requests

from jarvis.cluster.control import CHANNEL
from jarvis.status import Reason
from tests.conftest import HTTP_TIMEOUT, Api, clean_env, serve_process, stop_process, wait_for
from tests.fake_ollama import Script
from tests.redis_server import REDIS_SERVER
from tests.test_rejoin_scale import mirroring
from tests.test_scale import LEASE_TTL_S, apps_on, health, redis_server, two_processes  # noqa: F401

pytest.importorskip("redis", reason="the redis client is not installed (pip install jarvis[scale])")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.fixture
def processes(fake, redis_server, tmp_path):  # noqa: F811
    """Start ``jarvis serve`` processes on one SQLite file, one Redis and the fake; stopped after."""
    procs = []

    def start(name: str, **env) -> tuple:
        settings = {
            "JARVIS_OLLAMA_URL": fake.url, "JARVIS_BACKEND": "ollama", "JARVIS_MODEL": "tiny",
            "JARVIS_DATABASE": str(tmp_path / "shared.sqlite3"),
            "JARVIS_INSTANCE_DIR": str(tmp_path / f"instance-{name}"),
            "JARVIS_REDIS_URL": redis_server.url, "JARVIS_HEARTBEAT": "0.2",
            "JARVIS_FIRST_TOKEN_TIMEOUT": "30", "JARVIS_IDLE_TIMEOUT": "30", **env,
        }  # fmt: skip
        with open(tmp_path / f"serve-{name}.log", "w") as log:
            proc, api = serve_process(clean_env(**settings), stderr=log)
        procs.append(proc)
        api = Api(api.url)
        wait_for(lambda: health(api).get("coordination_ok"), timeout=5, what=f"{name} subscribed")
        return proc, api

    yield start
    for proc in procs:
        stop_process(proc)


# item: a prompt refused for capacity must leave the chat's live answer in another process alone


@two_processes
def test_a_prompt_refused_for_capacity_at_b_leaves_the_live_answer_at_a(processes, fake):
    # lost before: B's claim cancelled A's answer (superseded) and then B refused the prompt (503)
    _, a = processes("a")
    _, b = processes("b", JARVIS_MAX_STREAMS="1")
    fake.push(Script(tokens=30, interval_s=0.03), Script(tokens=5, stall_after=2))
    session, other = a.session(), b.session()
    live = a.send(session, "live at A")
    live.until("token")
    busy = b.send(other, "holds B's one slot")
    busy.until("token")
    refused = b.send(session, "refused at B")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "at_capacity"
    assert live.end()["status"] == "completed"
    assert live.text() == "".join(f"tok{i} " for i in range(30))
    assert b.stop(other) == {"stopped": True}
    assert busy.end()["status"] == "stopped"


# item: a dead owner must not block its session for the whole lease


@two_processes
def test_a_prompt_after_the_owner_is_killed_streams_within_seconds_not_the_lease(processes, fake):
    # would wait: the lease (10 s) outlives the killed owner; before, the prompt failed with
    # supersede_timeout after 2 s and every prompt did until the lease ran out
    # a long supersede deadline: only the liveness key can let the prompt in within seconds
    proc_a, a = processes("a", JARVIS_LEASE_TTL="10", JARVIS_SUPERSEDE_TIMEOUT="5")
    _, b = processes("b", JARVIS_LEASE_TTL="10", JARVIS_SUPERSEDE_TIMEOUT="5")
    fake.push(Script(tokens=5, stall_after=2), Script(tokens=3))
    session, first = a.answering("first")
    wait_for(
        lambda: [m for m in b.messages(session) if m["role"] == "assistant" and m["content"]],
        what="A to save the text so far",
    )
    proc_a.send_signal(signal.SIGKILL)
    proc_a.wait(5)
    killed = time.monotonic()
    second = b.send(session, "second")
    second.until("token")
    took = time.monotonic() - killed
    assert second.end()["status"] == "completed"
    print(f"from kill -9 to the next prompt's first token: {took:.2f} s")
    assert took < 2.5  # the liveness key's expiry (1.5 s), well under the lease and the deadline
    first.close()
    answers = [m for m in b.messages(session) if m["role"] == "assistant"]
    assert [(m["status"], m["content"]) for m in answers] == [
        ("interrupted", "tok0 tok1 "),
        ("completed", "tok0 tok1 tok2 "),
    ]


class StuckOnce:
    """The app's upstream, but its first call sends one chunk and then blocks, ignoring cancel."""

    def __init__(self, real):
        self.real = real
        self.name, self.default_model = real.name, real.default_model
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def stream_chat(self, chat, cancel, session=None):
        self.calls += 1
        if self.calls > 1:
            yield from self.real.stream_chat(chat, cancel, session=session)
            return
        yield "a"
        self.entered.set()
        self.release.wait(10)  # blocks without looking at cancel, as a wedged call would

    def __getattr__(self, name):
        return getattr(self.real, name)


def stuck_answer(app, api):
    """A session whose answer's worker is stuck in the model call: (session, its response, upstream)."""
    j = app.extensions["jarvis"]
    stuck = StuckOnce(j.upstream)
    j.upstream = stuck
    session, first = api.answering("stuck")
    assert stuck.entered.wait(2)
    return session, first, stuck


def test_one_deadline_covers_the_wait_for_the_predecessor_and_for_the_lease(
    make_app,
    make_server,
    fake,
    redis_server,  # noqa: F811
):
    # before: 0.5 s for the stuck predecessor, then 0.5 s more for its lease, then supersede_timeout;
    # without Redis the same prompt goes ahead after one timeout: with Redis now too
    [(app, a)] = apps_on(
        make_app, make_server, redis_server, 1, supersede_timeout_s=0.5, cancel_timeout_s=5.0
    )
    session, first, stuck = stuck_answer(app, a)
    try:
        fake.script(tokens=3)
        sent = time.monotonic()
        second = a.send(session, "second")
        assert second.end()["status"] == "completed"
        opened = fake.wait_for_calls(1)[0].opened_at - sent
        print(f"the model called {opened:.2f} s after the prompt (supersede timeout 0.5 s)")
        assert 0.45 <= opened < 0.85
    finally:
        stuck.release.set()
    assert first.end()["status"] == "superseded"


def test_a_stuck_worker_gives_its_lease_back_once_detached(make_app, make_server, fake, redis_server):  # noqa: F811
    # before: the cancelled, stuck worker's lease was only left to expire (10 s here), so the
    # session's next prompt elsewhere failed with supersede_timeout after 2 s
    (app, a), (_, b) = apps_on(make_app, make_server, redis_server, lease_ttl_s=10.0, cancel_timeout_s=0.2)
    session, first, stuck = stuck_answer(app, a)
    try:
        assert a.stop(session) == {"stopped": True}
        assert first.end()["status"] == "stopped"  # detached after cancel_timeout_s
        fake.script(tokens=3)
        sent = time.monotonic()
        second = b.send(session, "second")
        assert second.end()["status"] == "completed"
        assert fake.wait_for_calls(1)[0].opened_at - sent < 0.5
        third = a.send(session, "third")  # and in the stuck worker's own process
        assert third.end()["status"] == "completed"
    finally:
        stuck.release.set()


# item: one table of reasons; a misspelt one is refused, never turned into "stopped"


def test_a_control_message_with_an_unknown_reason_cancels_nothing(make_app, make_server, fake, redis_server):  # noqa: F811
    [(app, a)] = apps_on(make_app, make_server, redis_server, 1)
    fake.script(tokens=20, interval_s=0.02)
    session, answer = a.answering()
    (stream,) = app.extensions["jarvis"].registry.live()
    with redis_server.client() as r:
        r.publish(CHANNEL, f"stop\t{session}\tstoped\tother\t{stream.lease.ticket + 1}")
    assert answer.end()["status"] == "completed"


def test_cancel_takes_a_reason_of_the_table_only(app, fake):
    fake.script(tokens=5, stall_after=2)
    registry = app.extensions["jarvis"].registry
    with pytest.raises(ValueError):
        registry.stop("any session", "stoped")
    with pytest.raises(ValueError):
        registry.cancel_where(lambda s: True, "stoped")
    client = app.test_client()
    session = client.post("/api/sessions").get_json()["id"]
    response = client.post(f"/api/sessions/{session}/messages", json={"content": "hi"})
    (stream,) = registry.live()
    with pytest.raises(TypeError):
        stream.cancel("stopped")  # a string, even a right one: the enum alone
    assert stream.cancel(Reason.STOPPED)
    response.close()


# item: the Redis connections of a process are bounded


def test_a_process_opens_at_most_its_pool_of_redis_connections(make_app, redis_server):  # noqa: F811
    # before: each concurrent call opened one more connection; a burst held 40 here
    app = make_app(redis_url=redis_server.url, max_streams=2, redis_timeout_s=3.0)
    coord = app.extensions["jarvis"].coord
    wait_for(lambda: coord.health()["ok"], what="subscribed")
    with redis_server.client() as r:
        before = r.info("clients")["connected_clients"]
        r.execute_command("CLIENT", "PAUSE", "700", "ALL")  # every call waits: each holds a connection
        threads = [threading.Thread(target=coord.held, args=(["x"],)) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        opened = r.info("clients")["connected_clients"] - before
    print(f"40 concurrent calls opened {opened} connections")
    assert opened <= 2 + 6  # JARVIS_MAX_STREAMS + 6, the pool


# item: HEAD on the attach route starts no reader


def test_head_on_the_attach_route_says_whether_an_answer_is_live_and_starts_no_mirror(
    make_app,
    make_server,
    fake,
    redis_server,  # noqa: F811
):
    # before: a HEAD at another process started a mirror nobody detached: the owner pumped for seconds
    (_, a), (_, b) = apps_on(make_app, make_server, redis_server)
    fake.script(tokens=10, stall_after=2)
    session = a.session()

    def head(api):
        url = f"{api.url}/api/sessions/{session}/stream"
        return requests.head(url, headers=api.headers, timeout=HTTP_TIMEOUT).status_code

    assert head(a) == head(b) == 204
    answer = a.send(session, "hi")
    answer.until("token")
    published = redis_server.commands().get("publish", 0)
    assert head(b) == 200 and head(a) == 200
    assert redis_server.commands().get("publish", 0) == published  # no attach went out
    assert not mirroring()
    with redis_server.client() as r:
        assert r.keys("jarvis:reader:*") == []
    assert a.stop(session) == {"stopped": True}
    assert answer.end()["status"] == "stopped"


# item: a Last-Event-ID that is not one of ours replays from the start, and no message stops the listener

BAD_IDS = ["{trace}.²", "{trace}.-1", "{trace}." + "9" * 40, "{trace}.1.2"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_last_event_id_that_is_not_a_number_replays_from_the_start(api, fake, bad):
    # before: "²" passed isdigit() and int() raised: a 500 with a traceback
    fake.script(tokens=10, stall_after=3)
    session, answer = api.answering("hi")
    trace = answer.ids[0].rpartition(".")[0]
    reader = api.attach(session, bad.format(trace=trace))
    assert reader.status_code == 200, reader.response.text
    reader.until("token")
    assert reader.events == answer.events and reader.ids == answer.ids
    assert api.stop(session) == {"stopped": True}
    assert answer.end()["status"] == reader.end()["status"] == "stopped"


@two_processes
def test_a_bad_last_event_id_at_b_leaves_a_on_the_control_channel(processes, fake, redis_server):  # noqa: F811
    # before: the id crashed A's listener; for half a second A heard nothing, and B's Stop
    # answered stopped while the answer ran on
    _, a = processes("a")
    _, b = processes("b")
    fake.script(tokens=10, stall_after=2)
    session, answer = a.answering("hi")
    trace = answer.ids[0].rpartition(".")[0]
    readers = []
    attach = threading.Thread(target=lambda: readers.append(b.attach(session, f"{trace}.²")))
    attach.start()
    with redis_server.client() as r:  # B sets its reader's key, then publishes the attach
        wait_for(lambda: r.keys("jarvis:reader:*"), what="B's attach")
    stopped = time.monotonic()
    assert b.stop(session) == {"stopped": True}
    assert fake.chat_calls()[0].wait_closed(1.0), "A never heard the Stop"
    print(f"stop to closed upstream: {fake.chat_calls()[0].closed_at - stopped:.3f} s")
    assert answer.end()["status"] == "stopped"
    attach.join(HTTP_TIMEOUT[1])
    assert readers and readers[0].status_code == 200
    assert readers[0].end()["status"] == "stopped"


def test_the_listener_survives_a_message_whose_handling_fails(make_app, make_server, fake, redis_server):  # noqa: F811
    (app, a), (_, b) = apps_on(make_app, make_server, redis_server)
    fake.script(tokens=10, stall_after=2)
    session, answer = a.answering("hi")
    coord = app.extensions["jarvis"].coord

    def broken(*args):
        raise RuntimeError("a bug while serving an attach")

    coord.pumps.attach = broken  # what the owner calls for a remote reader's attach
    with redis_server.client() as r:
        r.publish(CHANNEL, f"attach\t{session}\t{coord.process_id}\treader\t")
        assert b.stop(session) == {"stopped": True}  # published right behind it
    assert fake.chat_calls()[0].wait_closed(1.0), "A never heard the Stop"
    assert answer.end()["status"] == "stopped"
    assert health(a)["coordination_ok"]


# item: garbage in Jarvis's keys counts as missing


@pytest.mark.parametrize("kind", ["ticket", "lease", "owner"])
def test_garbage_in_a_sessions_keys_counts_as_missing(make_app, make_server, fake, redis_server, kind):  # noqa: F811
    # before: a ticket that is no number failed the claim's script (500); a lease value without a
    # ticket failed the worker (an internal error)
    [(_, a)] = apps_on(make_app, make_server, redis_server, 1)
    fake.script(tokens=3)
    session = a.session()
    with redis_server.client() as r:
        r.set(f"jarvis:{kind}:{session}", "garbage", px=60_000)
    answer = a.send(session, "hi")
    assert answer.status_code == 200, answer.json()
    assert answer.end()["status"] == "completed"
    assert a.send(session, "again").end()["status"] == "completed"
