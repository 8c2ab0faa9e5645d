"""Chaos soak: many users, random actions, a misbehaving upstream; the invariants hold throughout.

``pytest tests/test_soak.py --soak-seconds 300 --soak-seed 42`` runs longer or replays a seed.
On failure the seed and the event log are printed, which is what a replay needs.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
import requests

from tests.conftest import Api, fds_outside_sqlite, wait_for
from tests.fake_ollama import FakeOllama, Script

USERS = 10


def _tag(body: dict) -> str:
    """The session a prompt belongs to: prompts start with '[session] '."""
    content = body.get("messages", [{}])[-1].get("content", "")
    return content.split("]", 1)[0]


def _upstream_behaviour(rng: random.Random, lock: threading.Lock):
    def choose(body: dict) -> Script:
        with lock:
            roll = rng.random()
            tokens = rng.randint(1, 40)
            interval = rng.choice([0.0, 0.002, 0.01])
            k = rng.randint(0, max(0, tokens - 1))
            delay = rng.uniform(0.05, 0.4)
        if roll < 0.45:
            return Script(tokens=tokens, interval_s=interval)
        if roll < 0.55:
            return Script(tokens=tokens, interval_s=interval, load_delay_s=delay)
        if roll < 0.65:
            return Script(tokens=tokens, stall_after=k)  # ends at the idle timeout or a cancel
        if roll < 0.75:
            return Script(tokens=tokens, error_after=k)
        if roll < 0.82:
            return Script(status=500)
        if roll < 0.89:
            return Script(refuse=True)
        if roll < 0.95:
            return Script(tokens=tokens, drop_after=k)
        return Script(load_delay_s=5)  # ends at the first-token timeout or a cancel

    return choose


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_chaos_soak(request, tmp_path, make_app, make_server):
    seconds = request.config.getoption("--soak-seconds")
    seed = request.config.getoption("--soak-seed") or random.randrange(1 << 30)
    rng, rng_lock = random.Random(seed), threading.Lock()
    log: list[tuple] = []
    failures: list[str] = []
    began = time.monotonic()

    def note(*event):
        log.append((round(time.monotonic() - began, 3), *event))

    with FakeOllama(key=_tag) as fake:
        fake.script(_upstream_behaviour(rng, rng_lock))
        app = make_app(
            ollama_url=fake.url, max_streams=8, idle_timeout_s=0.5, first_token_timeout_s=1.0, heartbeat_s=0.1
        )
        server = make_server(app)
        api = Api(server.url)
        store = app.extensions["jarvis"].store
        api.send(api.session(), "[warm] up").rest()
        threads_before, (fds_before, db_fds_before) = threading.active_count(), fds_outside_sqlite()
        accepted: dict[str, list[str]] = {}
        accepted_lock = threading.Lock()
        stop_all = threading.Event()

        def check_stream(sse, who) -> None:
            events = sse.rest()
            ends = [e for e in events if e[0] == "end"]
            if len(ends) != 1 or events[-1][0] != "end":
                failures.append(f"{who}: not exactly one end, last: {events[-3:]}")

        def send(sid, who):
            with rng_lock:
                n = rng.randrange(10**6)
            prompt = f"[{sid}] {who} {n}"
            sse = api.send(sid, prompt)
            if sse.status_code == 200:
                with accepted_lock:
                    accepted.setdefault(sid, []).append(prompt)
            elif sse.status_code != 503:
                failures.append(f"{who}: HTTP {sse.status_code}")
            note(who, "send", sid[:6], sse.status_code)
            return sse if sse.status_code == 200 else None

        def user(i: int) -> None:
            sid = api.session()
            who = f"u{i}"
            while time.monotonic() - began < seconds and not failures:
                with rng_lock:
                    action = rng.choice(["complete", "supersede", "stop", "disconnect", "slow", "idle"])
                    pause = rng.uniform(0, 0.05)
                note(who, action)
                try:
                    sse = send(sid, who)
                    if sse is None:
                        stop_all.wait(0.2)  # at capacity: back off like a polite client
                        continue
                    if action == "complete":
                        check_stream(sse, who)
                    elif action == "supersede":
                        sse.next()
                        newer = send(sid, who)
                        check_stream(sse, who)
                        if newer is not None:
                            check_stream(newer, who)
                    elif action == "stop":
                        sse.next()
                        api.stop(sid)
                        check_stream(sse, who)
                    elif action == "disconnect":
                        sse.next()
                        sse.close()
                    elif action == "slow":
                        while sse.next() is not None:
                            stop_all.wait(pause)  # a reader slower than the tokens
                        ends = [e for e in sse.events if e[0] == "end"]
                        if len(ends) != 1 or sse.events[-1][0] != "end":
                            failures.append(f"{who}: slow reader saw {sse.events[-3:]}")
                    else:
                        stop_all.wait(pause)  # sent, never read: the response waits in buffers
                        sse.close()
                except requests.RequestException as e:
                    failures.append(f"{who}: {action} exceeded its bound: {type(e).__name__}")

        def monitor() -> None:
            while not stop_all.is_set():
                t = time.monotonic()
                try:
                    ok = requests.get(api.url + "/healthz", timeout=2).status_code == 200
                except requests.RequestException:
                    ok = False
                if not ok or time.monotonic() - t > 1.0:
                    failures.append(f"/healthz slow or failing at {t - began:.2f}s")
                stop_all.wait(0.1)

        watcher = threading.Thread(target=monitor)
        watcher.start()
        users = [threading.Thread(target=user, args=(i,)) for i in range(USERS)]
        for t in users:
            t.start()
        for t in users:
            t.join(seconds + 60)
        stop_all.set()
        watcher.join(5)

        def report() -> str:
            tail = "\n".join(map(str, log[-60:]))
            return (
                f"seed={seed} (replay: --soak-seed {seed})\n"
                + "\n".join(failures[:10])
                + "\nlast events:\n"
                + tail
            )

        assert not any(t.is_alive() for t in users), report()
        assert failures == [], report()
        assert fake.overlaps == [], report() + f"\noverlapping upstream calls: {fake.overlaps[:3]}"
        wait_for(lambda: app.extensions["jarvis"].registry.live() == [], timeout=10, what="registry to drain")
        for sid, prompts in accepted.items():
            messages = store.get_session(sid)["messages"]
            stored = [m["content"] for m in messages if m["role"] == "user"]
            assert set(prompts) <= set(stored), report()
            assert "streaming" not in {m["status"] for m in messages}, report()
        wait_for(lambda: fake.active == 0, timeout=10, what="upstream calls to close")
        wait_for(
            lambda: threading.active_count() <= threads_before, timeout=10, what="threads back to baseline"
        )
        wait_for(
            lambda: fds_outside_sqlite()[0] <= fds_before + 5, timeout=10, what="descriptors back to baseline"
        )
        # SQLite's kept files: at most one per connection that was open at once, one per thread
        held = fds_outside_sqlite()[1] - db_fds_before
        assert held <= server.threads * 2, f"{held} more SQLite descriptors than waitress has threads"
        print(f"soak: seed={seed} {len(log)} events, {sum(map(len, accepted.values()))} accepted prompts")
