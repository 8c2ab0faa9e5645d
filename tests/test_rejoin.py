"""Rejoining a live answer: ids on every event, attach with Last-Event-ID, the detach grace."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from jarvis.lifecycle.body import MAX_WATCHERS
from tests.conftest import HTTP_TIMEOUT, SSE, Api, wait_for
from tests.fake_ollama import Script

SLOW = Script(tokens=40, interval_s=0.02)  # about 0.8 s of answer: time to leave and come back
FULL = "".join(f"tok{i} " for i in range(40))


def keeping() -> bool:
    """A keeper thread drives a detached answer."""
    return any(t.name.startswith("jarvis-keeper") for t in threading.enumerate())


@pytest.fixture
def graced(make_app, make_server):
    """Jarvis under waitress with a detach grace; returns (Api, app) for a given grace."""

    def make(grace: float, **adj) -> tuple[Api, object]:
        app = make_app(detach_grace_s=grace)
        return Api(make_server(app, **adj).url), app

    return make


def test_every_event_of_an_answer_carries_an_id_in_order(api, fake):
    fake.script(tokens=5)
    sid = api.session()
    sse = api.send(sid, "hi")
    sse.end()
    trace = sse.events[0][1]["trace_id"]
    assert sse.ids == [f"{trace}.{n}" for n in range(1, len(sse.events) + 1)]


def attach_replays_then_follows(sender: Api, reader: Api, fake) -> None:
    """A reader attached at ``reader`` mid-answer gets what was streamed, the live events, the same end."""
    fake.script(SLOW)
    sid, first = sender.answering("hi")
    second = reader.attach(sid)
    assert second.status_code == 200
    assert first.end() == second.end() == {"status": "completed"}
    assert first.text() == second.text() == FULL
    assert second.events == first.events and second.ids == first.ids  # the same events, the same ids


def last_event_id_sends_only_what_came_after(sender: Api, reader: Api, fake) -> None:
    """A reader attached at ``reader`` with the id of the third token gets only what came after it."""
    fake.script(SLOW)
    sid = sender.session()
    first = sender.send(sid, "hi")
    for _ in range(3):
        first.until("token")
    seen = len(first.events)
    rejoined = reader.attach(sid, first.ids[-1])
    rejoined.end()
    first.end()
    assert rejoined.events == first.events[seen:]  # no gap, no duplicate
    assert rejoined.ids == first.ids[seen:]
    assert first.text()[: len(first.text()) - len(rejoined.text())] + rejoined.text() == FULL


def watched(sender: Api, reader: Api, fake) -> tuple[SSE, SSE]:
    """A slow answer streaming to its prompt's client and to a reader attached at ``reader``, both
    past a token: (the prompt's response, the reader's)."""
    fake.script(SLOW)
    sid, first = sender.answering("hi")
    watcher = reader.attach(sid)
    watcher.until("token")
    return first, watcher


def a_watcher_that_leaves_never_ends_the_answer(sender: Api, reader: Api, fake) -> None:
    """A reader attached at ``reader`` that closes leaves the answer to finish and its upstream open."""
    first, watcher = watched(sender, reader, fake)
    watcher.close()
    assert first.end() == {"status": "completed"} and first.text() == FULL
    assert fake.chat_calls()[0].closed_by != "client"


def test_attach_sends_what_was_streamed_then_the_live_events_then_the_same_end(api, fake):
    attach_replays_then_follows(api, api, fake)


def test_last_event_id_sends_only_what_came_after_it(api, fake):
    last_event_id_sends_only_what_came_after(api, api, fake)


def test_an_id_from_another_answer_replays_the_live_one_from_its_start(api, fake):
    fake.push(Script(tokens=2), SLOW)
    sid = api.session()
    old = api.send(sid, "one")
    old.end()
    live = api.send(sid, "two")
    live.until("token")
    rejoined = api.attach(sid, old.ids[-1])
    assert rejoined.until("start")["trace_id"] == live.events[0][1]["trace_id"]
    rejoined.end()
    assert rejoined.text() == FULL


def test_attach_answers_204_when_nothing_is_live(api, fake):
    fake.script(tokens=2)
    sid = api.session()
    assert api.attach(sid).status_code == 204  # nothing asked yet
    api.send(sid, "hi").end()
    assert api.attach(sid).status_code == 204  # over
    assert api.attach("no-such-session").status_code == 404


def test_an_answer_takes_a_bounded_number_of_readers(api, fake):
    # each reader holds a server thread: without a bound one account could take them all
    fake.script(tokens=10, stall_after=1)
    sid, first = api.answering("hi")
    watchers = [api.attach(sid) for _ in range(MAX_WATCHERS)]
    assert [w.status_code for w in watchers] == [200] * MAX_WATCHERS
    one_more = api.attach(sid)
    assert one_more.status_code == 429 and one_more.json()["error"]["code"] == "too_many_streams"
    watchers.pop().close()  # seen at its next heartbeat, when the write fails

    def attached() -> bool:
        r = api.attach(sid)
        if r.status_code == 200:
            watchers.append(r)
        return r.status_code == 200

    wait_for(attached, interval=0.05, what="the place the watcher left")
    api.stop(sid)
    for w in watchers:
        assert w.end() == {"status": "stopped", "reason": "stopped"}
    first.end()


def test_a_watcher_that_leaves_never_cancels_the_answer(api, fake):
    a_watcher_that_leaves_never_ends_the_answer(api, api, fake)


def test_with_no_grace_a_closed_tab_ends_the_answer_at_once(api, fake):
    # the default: a watcher being there changes nothing when the prompt's client leaves
    first, watcher = watched(api, api, fake)
    first.close()
    call = fake.wait_for_calls(1)[0]
    assert call.wait_closed(2) and call.closed_by == "client"
    assert watcher.end() == {"status": "disconnected", "reason": "disconnected"}


@pytest.mark.parametrize("lookahead", [5, 0])
def test_within_the_grace_an_attach_takes_over_and_the_answer_finishes(graced, fake, lookahead):
    # without the grace the closed tab would end the answer as disconnected
    api, _ = graced(10.0, channel_request_lookahead=lookahead)
    fake.script(SLOW)
    sid, first = api.answering("hi")
    first.close()
    wait_for(keeping, what="the answer to be detached")
    rejoined = api.attach(sid)  # a reload
    assert rejoined.status_code == 200
    assert rejoined.end() == {"status": "completed"}
    assert rejoined.text() == FULL
    assert api.messages(sid)[-1]["content"] == FULL


def test_an_answer_nobody_rejoins_ends_when_the_grace_runs_out(graced, fake):
    # the keeper's deadline: without it the detached answer would stream (or stall) on forever
    grace = 0.5
    api, app = graced(grace)
    fake.script(tokens=10, stall_after=2)
    sid, first = api.answering("hi")
    call = fake.wait_for_calls(1)[0]
    left = time.monotonic()
    first.close()
    assert call.wait_closed(grace + 3) and call.closed_by == "client"
    assert grace <= call.closed_at - left < grace + 1.0
    wait_for(lambda: api.messages(sid)[-1]["status"] == "disconnected", what="stored as disconnected")
    assert api.messages(sid)[-1]["content"] == "tok0 tok1 "  # what was streamed is kept
    # the history shows the final status as soon as the answer ends (before its write lands and
    # its slot is released), so the slot is waited for, not asserted at once
    wait_for(lambda: app.extensions["jarvis"].registry.active() == 0, what="slot released")


def held_after_detach(sender: Api, reader: Api, fake) -> tuple[str, SSE]:
    """An answer whose prompt's client left within the grace, now held by a reader attached at
    ``reader``: (the session, the reader's response)."""
    fake.script(tokens=10, stall_after=2)
    sid, first = sender.answering("hi")
    first.close()
    wait_for(keeping, what="the answer to be detached")
    holder = reader.attach(sid)
    holder.until("token")
    return sid, holder


def the_holder_leaving_starts_the_grace_again(fake, holder: SSE, grace: float, slack: float) -> None:
    """While ``holder`` reads, the answer lives past its grace; once it leaves, the grace runs out
    (within ``slack``) and the upstream is closed."""
    call = fake.wait_for_calls(1)[0]
    assert not call.wait_closed(grace * 1.5)  # held by the reader: no grace runs out
    left = time.monotonic()
    holder.close()
    assert call.wait_closed(grace + slack) and call.closed_by == "client"
    assert call.closed_at - left >= grace


def test_a_takeover_that_leaves_starts_the_grace_again(graced, fake):
    grace = 0.5
    api, _ = graced(grace)
    _, second = held_after_detach(api, api, fake)
    the_holder_leaving_starts_the_grace_again(fake, second, grace, slack=3)


def test_when_the_holder_leaves_a_watcher_takes_over_at_once(graced, fake):
    api, _ = graced(0.3)
    first, watcher = watched(api, api, fake)
    first.close()
    assert watcher.end() == {"status": "completed"} and watcher.text() == FULL


@pytest.mark.parametrize("how", ["stop", "supersede", "shutdown"])
def test_a_detached_answer_ends_at_once_on_stop_supersede_and_shutdown(graced, fake, how):
    # the keeper waits for the worker in bounded slices: a cancel must reach it at once
    api, app = graced(30.0)
    fake.push(Script(tokens=10, stall_after=1), Script(tokens=2))
    sid, first = api.answering("hi")
    first.close()
    call = fake.wait_for_calls(1)[0]
    wait_for(keeping, what="the answer to be detached")
    began = time.monotonic()
    if how == "stop":
        assert api.stop(sid) == {"stopped": True}
    elif how == "supersede":
        assert api.send(sid, "again").end() == {"status": "completed"}
    else:
        assert app.extensions["jarvis"].shutdown(5.0) == []
    assert call.wait_closed(2) and call.closed_at - began < 0.5
    status = {"stop": "stopped", "supersede": "superseded", "shutdown": "stopped"}[how]
    if how != "shutdown":
        wait_for(lambda: api.messages(sid)[1]["status"] == status, what=status)


@pytest.mark.parametrize("lookahead", [5, 0])
def test_the_registry_owns_every_keeper_and_shutdown_joins_them(graced, fake, lookahead):
    # a keeper started by one of waitress's threads (no lookahead: a failed write) inherited its
    # daemon flag, and nothing held it: the interpreter's exit killed it mid-write, the answer
    # left "streaming"
    api, app = graced(30.0, channel_request_lookahead=lookahead)
    fake.script(tokens=10, stall_after=1)
    sid, first = api.answering("hi")
    first.close()
    wait_for(keeping, what="the answer to be detached")
    registry = app.extensions["jarvis"].registry
    keepers = [t for t in threading.enumerate() if t.name.startswith("jarvis-keeper")]
    assert [t.daemon for t in keepers] == [False]
    assert registry.keepers.alive() == [keepers[0].name]
    assert app.extensions["jarvis"].shutdown(5.0) == []
    assert not keepers[0].is_alive() and registry.keepers.alive() == []  # joined, not left running
    answer = app.extensions["jarvis"].store.get_session(sid)["messages"][-1]
    assert (answer["status"], answer["content"]) == ("stopped", "tok0 ")


def test_a_client_leaving_during_shutdown_ends_its_answer_without_a_keeper(graced, fake):
    # a keeper started after shutdown joined the others would run on, unowned, for the whole grace
    api, app = graced(30.0)
    fake.script(tokens=10, stall_after=1)
    sid, first = api.answering("hi")
    registry = app.extensions["jarvis"].registry
    registry.keepers.close(0.0)  # as shutdown does before the holder's client goes
    first.close()
    call = fake.wait_for_calls(1)[0]
    assert call.wait_closed(2) and call.closed_by == "client"
    assert not keeping()
    wait_for(lambda: api.messages(sid)[-1]["status"] == "disconnected", what="stored as disconnected")


def test_readers_leave_the_threads_that_stop_health_and_history_need(make_app, make_server, fake):
    # every reader holds a server thread: two answers and six attaches took all eight threads
    # (4 stream slots + 4 for control), and /healthz, the history and the account's own Stop
    # queued behind them for as long as the answers ran
    app = make_app(max_streams=4)
    api = Api(make_server(app).url)
    fake.script(tokens=10, stall_after=1)
    answers = [api.answering("hi") for _ in range(2)]
    readers = [api.attach(answers[i % 2][0]) for i in range(6)]
    assert [r.status_code for r in readers] == [200, 200, 429, 429, 429, 429]  # two slots were left
    readers[0].close()  # seen at its next heartbeat: its slot is free again
    wait_for(lambda: api.attach(answers[0][0]).status_code == 200, interval=0.05, what="the freed slot")
    for path in ("/healthz", f"/api/sessions/{answers[0][0]}"):
        assert requests.get(api.url + path, headers=api.headers, timeout=HTTP_TIMEOUT).status_code == 200
    for sid, first in answers:
        assert api.stop(sid) == {"stopped": True}
        assert first.end() == {"status": "stopped", "reason": "stopped"}


def test_an_account_has_a_bounded_number_of_readers_across_its_answers(make_app, make_server, fake):
    # without a count per account one user's attaches could take every slot the others need
    app = make_app(max_readers_per_user=2)
    accounts = app.extensions["jarvis"].accounts
    url = make_server(app).url
    users = {}
    for name in ("ann", "bob"):
        accounts.add(name, "correct horse battery")
        users[name] = Api(url, accounts.create_token(name, "tests"))
    fake.script(tokens=10, stall_after=1)
    ann = [users["ann"].answering("hi") for _ in range(2)]
    bob = users["bob"].answering("hi")
    readers = [users["ann"].attach(ann[i % 2][0]) for i in range(3)]  # held: a closed one frees its place
    assert [r.status_code for r in readers] == [200, 200, 429]
    refused = users["ann"].attach(ann[0][0])
    assert refused.json()["error"]["code"] == "too_many_streams"
    assert users["bob"].attach(bob[0]).status_code == 200  # another account's readers are its own
    for api, (sid, first) in [(users["ann"], ann[0]), (users["ann"], ann[1]), (users["bob"], bob)]:
        api.stop(sid)
        first.end()
