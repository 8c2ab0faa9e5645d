"""Rejoining a live answer that runs in another process: the reader's process mirrors it through Redis.

Two apps in this process, each with its own registry and coordinator, share one Redis and one
SQLite file, and stand for two processes; one test runs two ``jarvis serve`` processes.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from jarvis.cluster.mirror import ANSWER_WAIT_S, BATCH_S
from tests import test_rejoin
from tests.conftest import Api, wait_for
from tests.fake_ollama import Script
from tests.redis_server import REDIS_SERVER
from tests.test_rejoin import keeping
from tests.test_scale import LEASE_TTL_S, apps_on, health, pair, redis_server, two_processes  # noqa: F401

pytest.importorskip("redis", reason="the redis client is not installed (pip install jarvis[scale])")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def mirroring() -> bool:
    return any(t.name.startswith("jarvis-mirror") for t in threading.enumerate())


@pytest.fixture
def apps(make_app, make_server, redis_server):  # noqa: F811
    """(a, b): two apps on one Redis and one SQLite file, with the given detach grace."""

    def make(grace: float = 0.0, ttl: float = LEASE_TTL_S) -> tuple[Api, Api]:
        (_, a), (_, b) = apps_on(make_app, make_server, redis_server, lease_ttl_s=ttl, detach_grace_s=grace)
        return a, b

    return make


def test_attach_in_another_app_replays_then_follows_to_the_same_end(apps, fake):
    test_rejoin.attach_replays_then_follows(*apps(), fake)


def test_last_event_id_in_another_app_sends_only_what_came_after(apps, fake):
    test_rejoin.last_event_id_sends_only_what_came_after(*apps(), fake)


def test_a_reload_in_another_app_within_the_grace_takes_over_and_the_answer_finishes(apps, fake):
    # without the remote takeover the keeper's grace would run out and end the answer as disconnected
    a, b = apps(grace=1.0)
    fake.script(tokens=60, interval_s=0.03)  # about 1.8 s: longer than the grace
    sid, first = a.answering("hi")
    first.close()
    wait_for(keeping, what="the answer to be detached")
    rejoined = b.attach(sid)
    assert rejoined.status_code == 200
    assert rejoined.end() == {"status": "completed"}
    assert rejoined.text() == "".join(f"tok{i} " for i in range(60))
    wait_for(lambda: b.messages(sid)[-1]["status"] == "completed", what="stored as completed")


def test_a_remote_watcher_that_leaves_never_ends_the_answer(apps, fake):
    test_rejoin.a_watcher_that_leaves_never_ends_the_answer(*apps(), fake)
    wait_for(lambda: not mirroring(), what="the mirror to end")


def held_from_b(apps, fake, grace: float):
    """An answer at A whose client left within the grace, now held by a reader attached at B:
    (A, the session, B's reader)."""
    a, b = apps(grace=grace)
    sid, remote = test_rejoin.held_after_detach(a, b, fake)
    return a, sid, remote


def test_a_remote_holder_that_leaves_starts_the_grace_again(apps, fake):
    # the pump must see its reader go: else the remote holder would hold the answer forever
    grace = 0.5
    a, sid, remote = held_from_b(apps, fake, grace)
    test_rejoin.the_holder_leaving_starts_the_grace_again(fake, remote, grace, slack=4)
    wait_for(lambda: a.messages(sid)[-1]["status"] == "disconnected", what="stored as disconnected")


def test_a_remote_holder_whose_key_expires_is_seen_gone(apps, fake, redis_server):  # noqa: F811
    # a reader whose process died sends no detach: without the look at its key the remote
    # holder would hold the answer (and its upstream) until the model stops on its own
    grace = 0.5
    _, _, remote = held_from_b(apps, fake, grace)
    with redis_server.client() as r:
        assert r.delete(*r.keys("jarvis:reader:*")) == 1  # as if it had expired
    call = fake.wait_for_calls(1)[0]
    assert call.wait_closed(grace + 3) and call.closed_by == "client"
    remote.close()


def test_attach_answers_204_at_once_when_nothing_is_live_in_any_app(apps, fake):
    a, b = apps()
    fake.script(tokens=2)
    sid = a.session()
    began = time.monotonic()
    assert b.attach(sid).status_code == 204  # nothing asked yet: no lease, no wait for an owner
    assert time.monotonic() - began < 0.5
    a.send(sid, "hi").end()
    assert b.attach(sid).status_code == 204  # over


def test_attach_answers_204_when_the_lease_holder_never_answers(apps, fake, redis_server):  # noqa: F811
    # a process that died holds its lease until it expires: without the bounded first read the
    # reader would wait for frames that never come
    a, b = apps()
    sid = a.session()
    with redis_server.client() as r:
        r.set(f"jarvis:lease:{sid}", "ghost:1:dead trace 1", px=5000)
    began = time.monotonic()
    assert b.attach(sid).status_code == 204
    assert ANSWER_WAIT_S <= time.monotonic() - began < ANSWER_WAIT_S + 1.0


def test_a_stop_reaches_the_remote_reader_as_the_same_end(apps, fake):
    a, b = apps()
    fake.script(tokens=10, stall_after=2)
    sid, first = a.answering("hi")
    remote = b.attach(sid)
    remote.until("token")
    assert b.stop(sid) == {"stopped": True}
    assert first.end() == remote.end() == {"status": "stopped", "reason": "stopped"}
    assert fake.chat_calls()[0].wait_closed(1.0)


def test_a_remote_attach_answers_503_while_redis_is_away(apps, fake, redis_server):  # noqa: F811
    a, b = apps()
    fake.script(tokens=10, stall_after=2)
    sid, first = a.answering("hi")
    redis_server.stop()
    remote = b.attach(sid)
    assert remote.status_code == 503 and remote.json()["error"]["code"] == "coordination_unavailable"
    local = a.attach(sid)  # a reader in the owner's process needs no Redis
    assert local.status_code == 200 and local.until("token")
    a.stop(sid)
    assert first.end()["status"] == "stopped" and local.end()["status"] == "stopped"


def spent(redis_server, before: dict) -> dict:  # noqa: F811
    after = redis_server.commands()
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def test_redis_commands_of_an_answer_nobody_rejoins_and_of_one_remote_attach(apps, fake, redis_server):  # noqa: F811
    a, b = apps(ttl=30.0)  # no lease renewal within the answers: they count alike
    fake.script(Script(tokens=200, interval_s=0.002))
    sid = a.session()
    assert a.send(sid, "warm up").end()["status"] == "completed"
    before = redis_server.commands()
    assert a.send(sid, "nobody rejoins").end()["status"] == "completed"
    alone = spent(redis_server, before)
    alone.pop("pexpire", None)  # the processes' heartbeats: a clock's, not the answer's
    print("redis commands, an answer nobody rejoins:", alone)
    assert alone.get("evalsha") == 2 and not {"xadd", "xread", "exists", "pexpire"} & set(alone), alone

    before = redis_server.commands()
    first = a.send(sid, "rejoined")
    first.until("token")
    began = time.monotonic()
    remote = b.attach(sid)
    assert remote.end()["status"] == "completed"
    took = time.monotonic() - began
    first.end()
    wait_for(lambda: not mirroring(), what="the mirror to end")
    rejoined = spent(redis_server, before)
    events = len(remote.events)
    print(f"redis commands, one remote reader ({events} events, {took:.2f} s):", rejoined)
    assert rejoined["xadd"] <= took / BATCH_S + 3 < events  # a round trip per batch, not per token
    assert rejoined["publish"] - alone.get("publish", 0) <= 2  # attach, detach


@two_processes
def test_a_reload_at_another_process_rejoins_the_live_answer(pair, fake):  # noqa: F811
    fake.script(Script(tokens=60, interval_s=0.02))
    session, first = pair.a.answering("hi")
    remote = pair.b.attach(session)
    assert remote.status_code == 200
    assert first.end() == remote.end() == {"status": "completed"}
    assert remote.events == first.events and remote.ids == first.ids


@two_processes
def test_a_remote_reader_ends_when_the_owner_process_dies(pair, fake):  # noqa: F811
    # a killed owner sends no end: without the look at its lease the reader's response would
    # stay open, heartbeating, for as long as the page kept it
    fake.script(tokens=5, stall_after=2)
    session, first = pair.a.answering("hi")
    remote = pair.b.attach(session)
    remote.until("token")
    pair.proc_a.send_signal(signal.SIGKILL)
    pair.proc_a.wait(5)
    killed = time.monotonic()
    assert [name for name, _ in remote.rest()].count("end") == 0  # no end: the page reconnects
    assert time.monotonic() - killed < LEASE_TTL_S + 4.0
    first.close()
