"""A model of the registry: hypothesis drives streams through every ending and checks the invariants.

The upstream is a stand-in whose calls do what the state machine says: send a
token, finish, fail, or get stuck (ignore cancellation until released). Each
stream's body is iterated by its own thread, as a WSGI server would.
"""

from __future__ import annotations

import queue
import threading

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from jarvis.config import Config
from jarvis.conversation import Chat
from jarvis.errors import AtCapacity, UpstreamStreamError
from jarvis.lifecycle.registry import Registry
from jarvis.lifecycle.stream import Stream
from jarvis.store import Store
from tests.conftest import wait_for

SESSIONS = ("a", "b", "c")


class _Call:
    def __init__(self, session: str, trace: str, cancel):
        self.session = session
        self.trace = trace
        self.cancel = cancel
        self.commands: queue.Queue = queue.Queue()
        self.stuck = False
        self.done = threading.Event()


class _ScriptedUpstream:
    name, default_model = "model", "model"

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: list[_Call] = []
        self.violations: list[str] = []

    def stream_chat(self, chat, cancel, session=None):
        call = _Call(session, chat.messages[0]["content"], cancel)
        with self.lock:
            live = [c for c in self.calls if c.session == session and not c.done.is_set()]
            if any(not c.cancel.cancelled for c in live):
                self.violations.append(f"two uncancelled upstream calls in session {session}")
            self.calls.append(call)
        cancel.on_cancel(lambda: call.stuck or call.commands.put("cancelled"))
        try:
            while True:
                command = call.commands.get(timeout=10)
                if command == "token":
                    yield "t"
                elif command == "error":
                    raise UpstreamStreamError("scripted failure")
                elif command in ("finish", "cancelled", "unstick"):
                    return
        finally:
            call.done.set()

    def live(self) -> list[_Call]:
        with self.lock:
            return [c for c in self.calls if not c.done.is_set()]


class RegistryModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.config = Config(
            database=self.tmp.name + "/m.sqlite3",
            heartbeat_s=0.02,
            supersede_timeout_s=0.2,
            cancel_timeout_s=0.1,
        )
        self.store = Store(self.config.database)
        self.registry = Registry(max_streams=2)
        self.upstream = _ScriptedUpstream()
        self.sessions = {name: self.store.create_session()["id"] for name in SESSIONS}
        self.owners: list[tuple[Stream, threading.Thread, list, threading.Event]] = []
        self.counts = dict.fromkeys(("prompts", "refused", "acts", "acts_on_live"), 0)

    def _own(self, stream: Stream, frames: list, gone: threading.Event) -> None:
        body = iter(stream)
        for frame in body:
            frames.append(frame)
            if gone.is_set():
                break
        stream.close()  # what a WSGI server does after the last write or a failed one

    def _settle(self) -> None:
        """Let every worker reach the upstream or its end, and every abandoned or cancelled body
        end: each rule then acts on a state that no longer moves by itself."""

        def settled():
            called = {c.trace for c in self.upstream.calls}
            for stream, owner, _, gone in self.owners:
                if not (stream.worker.done.is_set() or stream.trace_id in called):
                    return False
                ending = gone.is_set() or (stream.scope.cancelled and stream.worker.done.is_set())
                if ending and owner.is_alive():
                    return False
            return True

        wait_for(settled, timeout=5, what="workers to reach the upstream and bodies to end")

    def _acted(self, on_live: bool) -> None:
        self.counts["acts"] += 1
        self.counts["acts_on_live"] += on_live

    def _something_live(self, index: int) -> None:
        """Settle; if nothing lives, prompt (in the session ``index`` picks) so the action has a target."""
        self._settle()
        if not self.registry.live():
            self.prompt(SESSIONS[index % len(SESSIONS)])
            self._settle()

    @initialize()
    def five_prompts_over_three_sessions(self):
        for session in (*SESSIONS, *SESSIONS[:2]):  # two supersedes, and a refusal while two slots are busy
            self.prompt(session)

    @rule(session=st.sampled_from(SESSIONS))
    def prompt(self, session):
        self._settle()
        sid = self.sessions[session]
        stream = Stream(
            session_id=sid,
            trace_id=(trace := f"t{len(self.owners)}"),
            chat=Chat("model", [{"role": "user", "content": trace}]),
            upstream=self.upstream,
            store=self.store,
            config=self.config,
            release=self.registry.release,
        )
        stream.user_message_id, stream.message_id = self.store.add_exchange(sid, "p", trace, "model")
        self.counts["prompts"] += 1
        try:
            self.registry.hand_over(stream)
        except AtCapacity:
            self.counts["refused"] += 1
            return
        frames, gone = [], threading.Event()
        owner = threading.Thread(target=self._own, args=(stream, frames, gone))
        owner.start()
        self.owners.append((stream, owner, frames, gone))

    # the rules below pick among what is live after settling, by index: hypothesis needs the same
    # draws to mean the same rules when it replays a case, so no precondition reads thread state
    @rule(index=st.integers(min_value=0))
    def stop(self, index):
        self._something_live(index)
        live = sorted(self.registry.live(), key=lambda s: s.trace_id)
        if live:
            self.registry.stop(live[index % len(live)].session_id)
        self._acted(bool(live))

    @rule(index=st.integers(min_value=0))
    def disconnect(self, index):
        self._something_live(index)
        open_ = [o for o in self.owners if o[1].is_alive() and not o[3].is_set()]
        if open_:
            open_[index % len(open_)][3].set()
        self._acted(bool(open_))

    @rule(
        index=st.integers(min_value=0),
        command=st.sampled_from(["token", "token", "finish", "error", "stick", "unstick"]),
    )
    def upstream_acts(self, index, command):
        self._something_live(index)
        live = sorted(self.upstream.live(), key=lambda c: c.trace)
        self._acted(bool(live))
        if command == "unstick":
            for call in live:
                if call.stuck:
                    call.commands.put("unstick")
        elif live:
            call = live[index % len(live)]
            if command == "stick":
                call.stuck = True  # from now on it ignores cancellation
            else:
                call.commands.put(command)

    @invariant()
    def one_uncancelled_upstream_call_per_session(self):
        assert self.upstream.violations == []

    @invariant()
    def at_most_one_current_stream_per_session(self):
        current = list(self.registry._current.items())
        assert all(stream.key == key for key, stream in current)
        assert len({stream.session_id for _, stream in current}) == len(current)
        assert len(self.registry._current) <= self.registry.max_streams

    @invariant()
    def every_finished_body_has_exactly_one_end_last(self):
        for stream, owner, frames, _ in self.owners:
            if not owner.is_alive():
                ends = [f for f in frames if b"event: end\n" in f]
                assert len(ends) <= 1 and (not ends or frames[-1] is ends[0]), stream

    def teardown(self):
        c = self.counts
        event(f"prompts per example: {c['prompts']}")
        if c["acts"]:
            event(f"actions that hit a live stream: {round(10 * c['acts_on_live'] / c['acts']) * 10}%")
        else:
            event("actions that hit a live stream: no action drawn")
        for session in SESSIONS:
            self.registry.stop(self.sessions[session])
        for call in self.upstream.calls:
            call.commands.put("unstick")
        for stream, owner, frames, gone in self.owners:
            gone.set()
            owner.join(5)
            assert not owner.is_alive(), f"{stream} body never ended"
            stream.worker.thread.join(5)
            assert not stream.worker.thread.is_alive(), f"{stream} worker never ended"
            if not gone.is_set() or any(b"event: end\n" in f for f in frames):
                assert sum(b"event: end\n" in f for f in frames) <= 1
        wait_for(lambda: self.registry.live() == [], timeout=5, what="every stream released")
        for sid in self.sessions.values():
            statuses = [
                m["status"] for m in self.store.get_session(sid)["messages"] if m["role"] == "assistant"
            ]
            assert "streaming" not in statuses, statuses
        assert self.upstream.violations == []
        self.tmp.cleanup()


TestRegistryModel = pytest.mark.slow(RegistryModel.TestCase)  # 60 examples of 20 steps: seconds
TestRegistryModel.settings = settings(
    max_examples=60,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
