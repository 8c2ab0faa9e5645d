"""The core without HTTP: cancel scopes, SSE framing, config, history, a stuck worker."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest

from jarvis import sse
from jarvis.cancel import CancelScope
from jarvis.config import Config
from jarvis.conversation import Chat
from jarvis.events import HEARTBEAT, End, Heartbeat, Start, Text
from jarvis.lifecycle.registry import Registry
from jarvis.lifecycle.stream import Stream
from jarvis.status import Reason
from jarvis.store import Store
from jarvis.upstream import Done, Meta
from tests.conftest import Api, config_refuses, wait_for
from tests.fake_ollama import Script


def test_cancel_runs_callbacks_once_and_late_ones_at_once():
    scope, ran = CancelScope(), []
    scope.on_cancel(lambda: ran.append("early"))
    undo = scope.on_cancel(lambda: ran.append("undone"))
    undo()
    assert scope.cancel("stopped") is True and scope.cancel("superseded") is False
    assert scope.reason == "stopped" and ran == ["early"]
    scope.on_cancel(lambda: ran.append("late"))
    assert ran == ["early", "late"]


def test_sse_frames_keep_newlines_inside_json():
    frame = sse.event("token", {"text": "a\n\nb"}, id=3)
    assert frame == b'id: 3\nevent: token\ndata: {"text":"a\\n\\nb"}\n\n'
    assert frame.count(b"\n\n") == 1
    assert json.loads(frame.split(b"data: ")[1]) == {"text": "a\n\nb"}


def test_sse_parser_reads_back_what_the_framer_wrote():
    framer = sse.SSEFramer()
    wire = b"".join(
        framer.frame(e, id)
        for e, id in (
            (Start("t", "m", 2, 1), "t.1"),
            (Text("a\n\nb"), "t.2"),
            (HEARTBEAT, None),
            (End("stopped", "stopped"), "t.3"),
        )
    )
    parser = sse.Parser()
    frames = [f for i in range(len(wire)) for f in parser.feed(wire[i : i + 1])]  # a byte at a time
    assert [(f.event, f.json(), f.id) for f in frames] == [
        ("start", {"trace_id": "t", "message_id": 2, "user_message_id": 1, "model": "m"}, "t.1"),
        ("token", {"text": "a\n\nb"}, "t.2"),
        ("end", {"status": "stopped", "reason": "stopped"}, "t.3"),
    ]
    assert parser.comments == 1


def test_sse_parser_follows_the_eventsource_rules():
    wire = (
        b"\xef\xbb\xbf: a comment\r\n"  # a byte order mark, then CRLF line ends
        b"id: 7\revent: note\rdata: one\rdata:two\rdata\r\r"  # CR alone ends a line too
        b"retry: 1500\ndata:  spaced\nfoo: ignored\n\n"  # one space after the colon is dropped
        b"id\nevent: empty\n\n"  # an event without data is none; a bare id resets it
        b"data: after\n\n"
        b"data: unfinished\n"  # no blank line: dropped at the end, unless flushed
    )
    for size in (1, 2, 3, len(wire)):
        parser = sse.Parser()
        frames = [f for i in range(0, len(wire), size) for f in parser.feed(wire[i : i + size])]
        assert [(f.event, f.data, f.id) for f in frames] == [
            ("note", b"one\ntwo\n", "7"),
            ("message", b" spaced", "7"),
            ("message", b"after", None),
        ], size
        assert parser.comments == 1 and parser.retry_ms == 1500
        assert [(f.event, f.data) for f in parser.flush()] == [("message", b"unfinished")]


def test_config_reads_environment_and_names_the_bad_variable():
    cfg = Config.from_env({"JARVIS_SUPERSEDE_TIMEOUT": "0.5", "JARVIS_MAX_STREAMS": "3"})
    assert cfg.supersede_timeout_s == 0.5 and cfg.max_streams == 3
    config_refuses("JARVIS_IDLE_TIMEOUT", "soon")
    config_refuses("JARVIS_MAX_STREAMS", "0")
    config_refuses("JARVIS_BACKEND", "gpt")


def test_crash_leftovers_become_interrupted(tmp_path):
    store = Store(str(tmp_path / "h.sqlite3"))
    sid = store.create_session()["id"]
    _, answer = store.add_exchange(sid, "hi", "t1", "tiny")
    store.save_answer(answer, "partial", "streaming")
    assert Store(str(tmp_path / "h.sqlite3")).recover() == 1
    msg = store.get_session(sid)["messages"][-1]
    assert (msg["status"], msg["content"]) == ("interrupted", "partial")


def test_prompt_is_stored_before_the_model_is_called(api, fake):
    fake.script(load_delay_s=60)
    sid = api.session()
    sse_ = api.send(sid, "remember me")
    sse_.until("start")
    fake.wait_for_calls(1)
    user, answer = api.messages(sid)
    assert user["content"] == "remember me" and answer["status"] == "streaming"
    api.stop(sid)
    sse_.end()


def test_streaming_answer_is_saved_at_least_once_per_flush_interval(make_app, make_server, fake):
    fake.script(tokens=400, interval_s=0.01)
    api = Api(make_server(make_app(flush_interval_s=0.2)).url)
    sid = api.session()
    s = api.send(sid, "x")
    s.until("token")

    def saved():
        answer = api.messages(sid)[-1]
        return answer["status"] == "streaming" and len(answer["content"]) > 0

    wait_for(saved, timeout=2, what="a checkpoint of the streaming answer")
    api.stop(sid)
    s.end()


def _stream(sid, trace_id, upstream, store, cfg, registry) -> Stream:
    """A stream built as the messages route builds it, without HTTP."""
    return Stream(
        session_id=sid,
        trace_id=trace_id,
        chat=Chat("m", []),
        upstream=upstream,
        store=store,
        config=cfg,
        release=registry.release,
    )


class _StuckUpstream:
    """An upstream that ignores cancellation: the worst case cleanup must survive."""

    name, default_model = "stuck", "stuck"

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()

    def stream_chat(self, chat, cancel, session=None):
        yield "a"
        self.entered.set()
        self.release.wait(10)  # blocks without looking at cancel
        yield "after-detach"


def test_worker_stuck_past_its_join_timeout_is_detached(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="jarvis")
    cfg = Config(database=str(tmp_path / "s.sqlite3"), cancel_timeout_s=0.1, heartbeat_s=0.05)
    store, registry, upstream = Store(cfg.database), Registry(4), _StuckUpstream()
    sid = store.create_session()["id"]
    stream = _stream(sid, "t", upstream, store, cfg, registry)
    registry.register(stream)
    stream.user_message_id, stream.message_id = store.add_exchange(sid, "x", "t", "m")
    stream.start(None)
    body = iter(stream)
    next(body)  # start
    assert upstream.entered.wait(2)
    began = time.monotonic()
    assert registry.stop(sid)
    frames = b"".join(body)
    assert time.monotonic() - began < 1.0  # cancel_timeout_s, not the worker's 10 s
    assert b'"status":"stopped"' in frames and registry.live() == []
    assert any(r.getMessage() == "worker_detached" for r in caplog.records)
    upstream.release.set()
    stream.worker.thread.join(2)
    answer = store.get_session(sid)["messages"][-1]
    assert answer["content"] == "a" and answer["status"] == "stopped"  # the detached worker wrote nothing


def test_shutdown_stores_every_live_answer_as_stopped(make_app, make_server, fake):
    fake.script(Script(tokens=1000, interval_s=0.01))
    app = make_app()
    server = make_server(app)
    api = Api(server.url)
    sids = [api.session() for _ in range(3)]
    streams = [api.send(s, "x") for s in sids]
    for s in streams:
        s.until("token")
    began = time.monotonic()
    assert server.shutdown(5) == []
    assert time.monotonic() - began < 2
    for s in streams:
        assert s.end() == {"status": "stopped", "reason": "shutdown"}
    store = app.extensions["jarvis"].store
    assert [store.get_session(s)["messages"][-1]["status"] for s in sids] == ["stopped"] * 3
    assert fake.active == 0


def test_text_before_a_stall_is_checkpointed_within_the_flush_interval(make_app, make_server, fake):
    fake.script(tokens=10, stall_after=3)
    api = Api(make_server(make_app(flush_interval_s=0.3, heartbeat_s=5)).url)
    sid = api.session()
    s = api.send(sid, "x")
    s.until("token")
    wait_for(
        lambda: api.messages(sid)[-1]["content"] == "tok0 tok1 tok2 ", timeout=2, what="stalled text saved"
    )
    api.stop(sid)
    s.end()


class _SlowToStopUpstream:
    """Notices cancel only after a wind-down, like a model finishing its current step."""

    name, default_model = "slow", "slow"

    def __init__(self, wind_down_s: float):
        self.wind_down_s = wind_down_s
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self._lock = threading.Lock()

    def stream_chat(self, chat, cancel, session=None):
        with self._lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            yield "a"
            cancel.wait(10)
            threading.Event().wait(self.wind_down_s)  # the step in progress finishes first
        finally:
            with self._lock:
                self.active -= 1


def _run_streams(tmp_path, upstream, n, staggered=False, **cfg):
    """Send ``n`` prompts into one session at the same instant (or each once the one before
    streams); return the end frames."""
    cfg = Config(database=str(tmp_path / "c.sqlite3"), heartbeat_s=0.05, **cfg)
    store, registry = Store(cfg.database), Registry(8)
    sid = store.create_session()["id"]
    barrier, ends = threading.Barrier(n), []

    def prompt(i):
        stream = _stream(sid, f"t{i}", upstream, store, cfg, registry)
        if staggered:
            wait_for(lambda: upstream.calls >= i and upstream.active >= min(i, 1), what=f"call {i}")
        else:
            barrier.wait(5)
        prev = registry.register(stream)
        stream.user_message_id, stream.message_id = store.add_exchange(sid, f"p{i}", f"t{i}", "m")
        stream.start(prev)
        for frame in stream:
            if b"event: end" in frame:
                ends.append(frame)

    threads = [threading.Thread(target=prompt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    wait_for(lambda: len(ends) == n - 1, what="every superseded stream to end")
    wait_for(lambda: upstream.active == 1, what="the survivor streaming")
    registry.stop(sid)
    for t in threads:
        t.join(10)
    return ends


def test_new_stream_waits_for_previous_worker_before_calling_upstream(tmp_path, caplog):
    # without the join, the new call starts while the old one is still winding down
    caplog.set_level(logging.INFO, logger="jarvis")
    upstream = _SlowToStopUpstream(wind_down_s=0.15)
    ends = _run_streams(tmp_path, upstream, 3, staggered=True)
    assert len(ends) == 3 and upstream.calls == 3
    assert upstream.max_active == 1
    assert sum(b"superseded" in e for e in ends) == 2
    assert any(r.getMessage() == "prev_stream_finished_cleanly" for r in caplog.records)


def test_prompts_at_the_same_instant_call_upstream_one_at_a_time(tmp_path):
    upstream = _SlowToStopUpstream(wind_down_s=0.05)
    ends = _run_streams(tmp_path, upstream, 6)
    assert len(ends) == 6 and upstream.max_active == 1
    assert sum(b"superseded" in e for e in ends) == 5


def test_previous_worker_past_supersede_timeout_is_logged_and_passed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="jarvis")
    upstream = _SlowToStopUpstream(wind_down_s=0.5)
    began = time.monotonic()
    ends = _run_streams(tmp_path, upstream, 2, staggered=True, supersede_timeout_s=0.1, cancel_timeout_s=1.0)
    assert len(ends) == 2 and time.monotonic() - began < 3
    assert any(r.getMessage() == "prev_stream_timeout_on_cancel" for r in caplog.records)


def test_readme_documents_every_setting():
    import os

    from jarvis.config import describe

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    missing = [name for name, _, _ in describe() if f"`{name}`" not in readme]
    assert missing == []


def _waiting_pair(tmp_path, **overrides):
    """Stream ``a`` streams from an upstream slow to stop; ``b`` supersedes it and waits for it."""
    cfg = Config(
        database=str(tmp_path / "w.sqlite3"),
        heartbeat_s=5.0,
        supersede_timeout_s=5.0,
        cancel_timeout_s=1.0,
        **overrides,
    )
    store, registry = Store(cfg.database), Registry(4)
    upstream = _SlowToStopUpstream(wind_down_s=0.5)
    sid = store.create_session()["id"]
    streams = []
    for trace in ("a", "b"):
        stream = _stream(sid, trace, upstream, store, cfg, registry)
        stream.user_message_id, stream.message_id = store.add_exchange(sid, trace, trace, "m")
        stream.start(registry.register(stream))
        streams.append(stream)
        if trace == "a":
            wait_for(lambda: upstream.calls == 1, what="the first call")
    return streams, registry, upstream, store


@pytest.mark.parametrize("reason", ["stopped", "disconnected", "shutdown"])
def test_cancel_of_a_stream_waiting_for_its_predecessor_ends_it_at_once(tmp_path, caplog, reason):
    # would wait out the predecessor's wind-down (then detach its own worker) if the wait on the
    # previous worker ignored the waiting stream's own cancel
    caplog.set_level(logging.INFO, logger="jarvis")
    (a, b), registry, upstream, store = _waiting_pair(tmp_path)
    body = iter(b)
    next(body)  # start
    if reason == "stopped":
        assert registry.stop(b.session_id)
    elif reason == "disconnected":
        b.cancel(Reason.DISCONNECTED)
    else:
        threading.Thread(target=registry.shutdown, args=(3.0,), name="test-shutdown").start()
    frames = b"".join(body)
    assert b'"status":"' + (b"stopped" if reason != "disconnected" else b"disconnected") in frames
    assert upstream.active == 1, "the end waited for the predecessor's wind-down"
    assert not any(r.getMessage() == "worker_detached" for r in caplog.records)
    assert upstream.calls == 1  # the waiting stream never called the upstream
    b.close()
    a.close()
    wait_for(lambda: registry.live() == [], what="both released")


class _LateMetaUpstream(_StuckUpstream):
    """Caught past its last checkpoint, mid-write, when it is detached; it writes once freed."""

    def stream_chat(self, chat, cancel, session=None):
        upstream = self

        def caught_mid_write():
            if threading.current_thread().name.startswith("jarvis-worker"):
                upstream.entered.set()
                upstream.release.wait(10)  # freed by the detach, below
                return True
            return False

        class LateMeta(dict):
            def keys(self):  # read while a worker merges it into the answer's metadata
                if caught_mid_write():
                    self["late"] = True
                return super().keys()

            def __iter__(self):  # a plain dict would be merged without calling keys()
                return iter(self.keys())

        class LateText(str):
            def __len__(self):  # measured by a worker after the checkpoint, before the hand-over
                caught_mid_write()
                return super().__len__()

        yield "a"
        yield Meta(LateMeta())
        yield LateText("late")
        self.entered.set()
        self.release.wait(10)  # blocks without looking at cancel
        yield Meta({"late": True})
        yield Done("stop", 1, 1)


def test_a_detached_worker_cannot_reach_the_stored_answer(tmp_path):
    cfg = Config(database=str(tmp_path / "d.sqlite3"), cancel_timeout_s=0.05, heartbeat_s=0.05)
    store, registry, upstream = Store(cfg.database), Registry(4), _LateMetaUpstream()
    sid = store.create_session()["id"]
    stream = _stream(sid, "t", upstream, store, cfg, registry)
    stream.user_message_id, stream.message_id = store.add_exchange(sid, "x", "t", "m")
    stream.start(registry.register(stream))

    class LetItWriteOnDetach(logging.Handler):
        # the worker gets free right after the detach, before the answer is stored
        def emit(self, record):
            if record.getMessage() == "worker_detached":
                upstream.release.set()
                stream.worker.thread.join(2)

    handler = LetItWriteOnDetach()
    jarvis_log = logging.getLogger("jarvis")
    jarvis_log.addHandler(handler)
    level = jarvis_log.level
    jarvis_log.setLevel(logging.INFO)
    try:
        body = iter(stream)
        next(body)
        assert upstream.entered.wait(2)
        registry.stop(sid)
        frames = b"".join(body)
    finally:
        jarvis_log.removeHandler(handler)
        jarvis_log.setLevel(level)
    assert upstream.release.is_set(), "the worker was never detached"
    assert b'"status":"stopped"' in frames
    answer = store.get_session(sid)["messages"][-1]
    assert answer["status"] == "stopped" and answer["content"] == "a"
    assert not (answer["meta"] or {}).get("late") and "usage" not in (answer["meta"] or {})


def test_the_disconnect_watcher_ends_with_a_shutdown_that_leaves_a_stream(tmp_path):
    # a watcher that polled while anything lived would run (and keep the process) for as long
    # as the stuck stream below: its body is never read nor closed, like a wedged host thread
    cfg = Config(database=str(tmp_path / "x.sqlite3"))
    store, registry, upstream = Store(cfg.database), Registry(4, disconnect_poll_s=0.01), _StuckUpstream()
    sid = store.create_session()["id"]
    stream = Stream(
        session_id=sid, trace_id="t", chat=Chat("m", []), upstream=upstream, store=store, config=cfg,
        release=registry.release, client_gone=lambda: False,
    )  # fmt: skip
    stream.start(registry.register(stream))
    assert upstream.entered.wait(2)
    assert registry.shutdown(0.05) == [stream]

    def watcher_gone():
        return not any(t.name == "jarvis-disconnect-watch" for t in threading.enumerate())

    wait_for(watcher_gone, timeout=2, what="the disconnect watcher to end")
    upstream.release.set()
    stream.close()
    assert registry.live() == []


def test_a_stream_superseded_while_it_waits_never_calls_the_upstream(tmp_path, fake):
    # guards both "superseded before it began" checkpoints (the worker's and the Ollama
    # client's): without them the waiting stream still calls the model once its turn comes
    from jarvis.upstream.ollama import OllamaUpstream

    fake.script(tokens=2)
    cfg = Config(
        database=str(tmp_path / "c.sqlite3"), ollama_url=fake.url, model="tiny",
        heartbeat_s=5.0, supersede_timeout_s=5.0, cancel_timeout_s=2.0,
    )  # fmt: skip
    store, registry = Store(cfg.database), Registry(4)
    slow, ollama = _SlowToStopUpstream(wind_down_s=0.3), _Recorded(OllamaUpstream(cfg))
    sid = store.create_session()["id"]
    streams = {}
    for trace, upstream in (("a", slow), ("b", ollama), ("c", ollama)):
        stream = Stream(
            session_id=sid, trace_id=trace, chat=Chat("tiny", [{"role": "user", "content": trace}]),
            upstream=upstream, store=store, config=cfg, release=registry.release,
        )  # fmt: skip
        stream.user_message_id, stream.message_id = store.add_exchange(sid, trace, trace, "tiny")
        stream.start(registry.register(stream))
        streams[trace] = stream
        if trace == "a":
            wait_for(lambda: slow.calls == 1, what="the first call")
    ends = {trace: b"".join(stream) for trace, stream in streams.items()}
    assert b'"status":"superseded"' in ends["a"] and b'"status":"superseded"' in ends["b"]
    assert b'"status":"completed"' in ends["c"]
    assert ollama.prompts == ["c"]  # b never reached the upstream, not even to be cancelled there
    assert [call.prompt for call in fake.chat_calls()] == ["c"]
    assert registry.live() == []


class _Recorded:
    """Passes calls on to ``inner``, recording the prompt of each stream_chat that runs."""

    def __init__(self, inner):
        self.inner = inner
        self.prompts: list[str] = []

    def stream_chat(self, chat, *args, **kwargs):
        self.prompts.append(chat.messages[-1]["content"])
        yield from self.inner.stream_chat(chat, *args, **kwargs)


def test_a_stream_cancelled_while_waiting_hands_its_wait_on_to_its_successor(tmp_path):
    # b, superseded while it waits for a, ends at once; c must then wait for a, still winding
    # down, not for b: else a's and c's upstream calls overlap
    (a, b), registry, upstream, store = _waiting_pair(tmp_path)
    c = _stream(b.session_id, "c", upstream, store, b.config, registry)
    c.user_message_id, c.message_id = store.add_exchange(b.session_id, "c", "c", "m")
    c.start(registry.register(c))
    assert b'"status":"superseded"' in b"".join(b)
    wait_for(lambda: upstream.calls == 2, timeout=5, what="c to call the upstream once a let go")
    assert upstream.max_active == 1
    registry.stop(c.session_id)
    for stream in (a, c):
        b"".join(stream)
    wait_for(lambda: registry.live() == [], what="every stream released")


HI = [{"role": "user", "content": "hi"}]


class _ScriptedUpstream:
    name, default_model = "scripted", "scripted"

    def stream_chat(self, chat, cancel, session=None):
        yield "Hel"
        yield "lo"
        yield Done("length", 3, 2)


class _LinesFramer:
    """A dialect without comments: one JSON line per event, nothing for a heartbeat."""

    def frame(self, event, id=None):
        if isinstance(event, Heartbeat):
            return b""
        return (json.dumps({"type": type(event).__name__, **vars(event)}) + "\n").encode()


def test_a_stateless_call_stores_nothing_and_reads_its_events_in_process(tmp_path):
    cfg = Config(database=str(tmp_path / "unused.sqlite3"), heartbeat_s=0.05)
    registry = Registry(4)
    stream = Stream(
        session_id=None, key="call-1", trace_id="t", chat=Chat("scripted", HI),
        upstream=_ScriptedUpstream(), config=cfg, release=registry.release,
    )  # fmt: skip
    registry.hand_over(stream)
    try:
        events = [e for e in stream.events() if not isinstance(e, Heartbeat)]
    finally:
        stream.close()
    text = "".join(e.text for e in events if isinstance(e, Text))
    end = events[-1]
    assert text == "Hello" and isinstance(events[0], Start)
    assert (end.status, end.meta["usage"]) == ("length", {"prompt_tokens": 3, "completion_tokens": 2})
    assert registry.live() == [] and not os.path.exists(cfg.database)


def test_a_framer_given_at_construction_frames_every_event(tmp_path):
    cfg = Config(database=str(tmp_path / "unused.sqlite3"), heartbeat_s=0.05)
    registry = Registry(4)
    stream = Stream(
        session_id=None, key="call-2", trace_id="t", chat=Chat("scripted", HI),
        upstream=_ScriptedUpstream(), config=cfg, release=registry.release, framer=_LinesFramer(),
    )  # fmt: skip
    registry.hand_over(stream)
    lines = [json.loads(line) for line in b"".join(stream).splitlines()]
    stream.close()
    types = [line["type"] for line in lines]
    assert types[0] == "Start" and set(types[1:-1]) == {"Text"} and types[-1] == "End"
    assert lines[-1]["status"] == "length" and registry.live() == []


def test_a_client_gone_while_a_caller_reads_events_in_process_cancels_once(tmp_path):
    cfg = Config(database=str(tmp_path / "e.sqlite3"), heartbeat_s=0.05)
    registry, upstream = Registry(4, disconnect_poll_s=0.01), _SlowToStopUpstream(0)
    gone = threading.Event()
    stream = Stream(
        session_id=None, key="call-3", trace_id="t", chat=Chat("m", []), upstream=upstream, config=cfg,
        release=registry.release, client_gone=gone.is_set,
    )  # fmt: skip
    registry.hand_over(stream)
    seen = []
    for event in stream.events():
        seen.append(event)
        if isinstance(event, Text):
            gone.set()  # the watcher cancels, as it would for a closed socket
    stream.close()
    assert seen[-1].status == "disconnected" and seen[-1].reason == "disconnected"
    assert sum(isinstance(e, End) for e in seen) == 1 and registry.live() == []
    registry.shutdown(1.0)
