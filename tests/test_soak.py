"""Chaos soak: many users, random actions, a misbehaving upstream; the invariants hold throughout.

``pytest tests/test_soak.py --soak-seconds 300 --soak-seed 42`` runs longer or replays a seed.
On failure the seed and the event log are printed, which is what a replay needs.
"""

from __future__ import annotations

import itertools
import random
import subprocess
import threading
import time
from collections import Counter

import pytest
import requests

from jarvis.store import Store
from tests.conftest import (
    Api,
    clean_env,
    fd_targets,
    fds_outside_sqlite,
    free_port,
    serve_process,
    stop_process,
    wait_for,
)
from tests.fake_ollama import FakeOllama, Script
from tests.redis_server import REDIS_SERVER, RedisServer

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


class Soak:
    """USERS users, each with one session, doing random things until ``seconds`` have passed.

    Each request goes to the next of ``apis`` in turn, so with two servers the requests for one
    session alternate between them. ``failures`` collects what broke an invariant on the way."""

    def __init__(self, apis: list[Api], seconds: float, seed: int):
        self.apis, self.seconds, self.seed = apis, seconds, seed
        self.rng, self.rng_lock = random.Random(seed), threading.Lock()
        self.log: list[tuple] = []
        self.failures: list[str] = []
        self.accepted: dict[str, list[str]] = {}
        self._accepted_lock = threading.Lock()
        self._turn = itertools.count()
        self._stop_all = threading.Event()
        self.began = time.monotonic()

    def api(self) -> Api:
        return self.apis[next(self._turn) % len(self.apis)]

    def note(self, *event) -> None:
        self.log.append((round(time.monotonic() - self.began, 3), *event))

    def run(self) -> None:
        self.began = time.monotonic()
        watcher = threading.Thread(target=self._monitor)
        watcher.start()
        users = [threading.Thread(target=self._user, args=(i,)) for i in range(USERS)]
        for t in users:
            t.start()
        for t in users:
            t.join(self.seconds + 60)
        self._stop_all.set()
        watcher.join(5)
        assert not any(t.is_alive() for t in users), self.report()
        assert self.failures == [], self.report()

    def report(self) -> str:
        tail = "\n".join(map(str, self.log[-60:]))
        return (
            f"seed={self.seed} (replay: --soak-seed {self.seed})\n"
            + "\n".join(self.failures[:10])
            + "\nlast events:\n"
            + tail
        )

    def check_stored(self, store) -> None:
        """Every accepted prompt is stored, and no answer is left streaming."""
        for sid, prompts in self.accepted.items():
            messages = store.get_session(sid)["messages"]
            stored = [m["content"] for m in messages if m["role"] == "user"]
            assert set(prompts) <= set(stored), self.report()
            assert "streaming" not in {m["status"] for m in messages}, self.report()

    def _check_stream(self, sse, who) -> None:
        events = sse.rest()
        ends = [e for e in events if e[0] == "end"]
        if len(ends) != 1 or events[-1][0] != "end":
            self.failures.append(f"{who}: not exactly one end, last: {events[-3:]}")

    def _send(self, sid, who):
        with self.rng_lock:
            n = self.rng.randrange(10**6)
        prompt = f"[{sid}] {who} {n}"
        sse = self.api().send(sid, prompt)
        if sse.status_code == 200:
            with self._accepted_lock:
                self.accepted.setdefault(sid, []).append(prompt)
        elif sse.status_code != 503:
            self.failures.append(f"{who}: HTTP {sse.status_code}")
        self.note(who, "send", sid[:6], sse.status_code)
        return sse if sse.status_code == 200 else None

    def _user(self, i: int) -> None:
        rng, pause_for = self.rng, self._stop_all.wait
        sid = self.api().session()
        who = f"u{i}"
        while time.monotonic() - self.began < self.seconds and not self.failures:
            with self.rng_lock:
                action = rng.choice(["complete", "supersede", "stop", "disconnect", "slow", "idle"])
                pause = rng.uniform(0, 0.05)
            self.note(who, action)
            try:
                sse = self._send(sid, who)
                if sse is None:
                    pause_for(0.2)  # at capacity: back off like a polite client
                    continue
                if action == "complete":
                    self._check_stream(sse, who)
                elif action == "supersede":
                    sse.next()
                    newer = self._send(sid, who)
                    self._check_stream(sse, who)
                    if newer is not None:
                        self._check_stream(newer, who)
                elif action == "stop":
                    sse.next()
                    self.api().stop(sid)
                    self._check_stream(sse, who)
                elif action == "disconnect":
                    sse.next()
                    sse.close()
                elif action == "slow":
                    while sse.next() is not None:
                        pause_for(pause)  # a reader slower than the tokens
                    ends = [e for e in sse.events if e[0] == "end"]
                    if len(ends) != 1 or sse.events[-1][0] != "end":
                        self.failures.append(f"{who}: slow reader saw {sse.events[-3:]}")
                else:
                    pause_for(pause)  # sent, never read: the response waits in buffers
                    sse.close()
            except requests.RequestException as e:
                self.failures.append(f"{who}: {action} exceeded its bound: {type(e).__name__}")

    def _monitor(self) -> None:
        while not self._stop_all.is_set():
            for api in self.apis:
                t = time.monotonic()
                try:
                    ok = requests.get(api.url + "/healthz", timeout=2).status_code == 200
                except requests.RequestException:
                    ok = False
                if not ok or time.monotonic() - t > 1.0:
                    self.failures.append(f"/healthz of {api.url} slow or failing at {t - self.began:.2f}s")
            self._stop_all.wait(0.1)


def _seed(request) -> int:
    return request.config.getoption("--soak-seed") or random.randrange(1 << 30)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_chaos_soak(request, tmp_path, make_app, make_server):
    soak = Soak([], request.config.getoption("--soak-seconds"), _seed(request))
    with FakeOllama(key=_tag) as fake:
        fake.script(_upstream_behaviour(soak.rng, soak.rng_lock))
        app = make_app(
            ollama_url=fake.url, max_streams=8, idle_timeout_s=0.5, first_token_timeout_s=1.0, heartbeat_s=0.1
        )
        server = make_server(app)
        api = Api(server.url)
        soak.apis.append(api)
        store = app.extensions["jarvis"].store
        api.send(api.session(), "[warm] up").rest()
        threads_before, (fds_before, db_fds_before) = threading.active_count(), fds_outside_sqlite()
        soak.run()
        report = soak.report
        assert fake.overlaps == [], report() + f"\noverlapping upstream calls: {fake.overlaps[:3]}"
        wait_for(lambda: app.extensions["jarvis"].registry.live() == [], timeout=10, what="registry to drain")
        soak.check_stored(store)
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
        print(
            f"soak: seed={soak.seed} {len(soak.log)} events, {sum(map(len, soak.accepted.values()))} accepted"
        )


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Threads:")).split()[1])


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_chaos_soak_across_two_processes(request, tmp_path, database):
    # two jarvis serve processes share one Redis and one database (SQLite here, PostgreSQL in
    # test_postgres.py); each request of a session goes to the other process than the one before,
    # so supersede, Stop and disconnect cross processes
    pytest.importorskip("redis", reason="the redis client is not installed (pip install jarvis[scale])")
    soak = Soak([], min(request.config.getoption("--soak-seconds"), 15.0), _seed(request))  # ≤ 30 s in all
    (tmp_path / "redis").mkdir()
    procs: list[subprocess.Popen] = []
    with FakeOllama(key=_tag) as fake:
        redis = RedisServer(free_port(), str(tmp_path / "redis")).start()
        try:
            for name in "ab":
                env = clean_env(
                    JARVIS_OLLAMA_URL=fake.url, JARVIS_BACKEND="ollama", JARVIS_MODEL="tiny",
                    JARVIS_DATABASE=database, JARVIS_INSTANCE_DIR=str(tmp_path / f"instance-{name}"),
                    JARVIS_REDIS_URL=redis.url, JARVIS_MAX_STREAMS="8", JARVIS_IDLE_TIMEOUT="0.5",
                    JARVIS_FIRST_TOKEN_TIMEOUT="1.0", JARVIS_HEARTBEAT="0.1",
                )  # fmt: skip
                with open(tmp_path / f"serve-{name}.log", "w") as log:
                    proc, api = serve_process(env, stderr=log)
                procs.append(proc)
                soak.apis.append(Api(api.url))
            for api in soak.apis:
                wait_for(lambda api=api: _health(api).get("coordination_ok"), timeout=5, what="subscribed")
                api.send(api.session(), "[warm] up").rest()
            port = redis.port
            before = {p.pid: (_threads(p.pid), _fds_but_redis(p.pid, port), fd_targets(p.pid)) for p in procs}
            fake.script(_upstream_behaviour(soak.rng, soak.rng_lock))
            soak.run()
            report = soak.report
            assert fake.overlaps == [], report() + f"\noverlapping upstream calls: {fake.overlaps[:3]}"
            for api in soak.apis:
                wait_for(
                    lambda api=api: _health(api)["active_streams"] == 0, timeout=10, what="streams to end"
                )
            store = Store(database)
            try:
                soak.check_stored(store)
            finally:
                store.close()
            wait_for(lambda: fake.active == 0, timeout=10, what="upstream calls to close")
            # a PostgreSQL pool keeps the connections it opened: at most its size (8 + 4 + 2) more
            slack = 5 if "://" not in database else 5 + 14
            for pid, (threads, fds, targets) in before.items():
                wait_for(lambda pid=pid, threads=threads: _threads(pid) <= threads, timeout=10,
                         what=f"threads of {pid} back to baseline")  # fmt: skip
                try:
                    wait_for(lambda pid=pid, fds=fds: _fds_but_redis(pid, port) <= fds + slack, timeout=10,
                             what=f"descriptors of {pid} back to baseline")  # fmt: skip
                except AssertionError as e:
                    kept = Counter(fd_targets(pid)) - Counter(targets)
                    raise AssertionError(f"{e}; kept: {dict(kept)}") from None
                # the Redis client's pool keeps the connections it opened, at most one per thread
                # that used Redis at once (those of the baseline, and a worker per live answer):
                # bounded by the threads, not by the answers
                assert _redis_connections(pid, port) <= threads + 8
            for proc in procs:
                assert proc.poll() is None, "a server process died"
            print(f"soak across two processes: seed={soak.seed} {len(soak.log)} events")
        finally:
            for proc in procs:
                stop_process(proc)
            redis.stop()


def _redis_connections(pid: int, port: int) -> int:
    return sum(t.endswith(f"->{port}") for t in fd_targets(pid))


def _fds_but_redis(pid: int, port: int) -> int:
    """Descriptors of ``pid`` on neither a SQLite file nor a connection to Redis on ``port``."""
    return fds_outside_sqlite(pid)[0] - _redis_connections(pid, port)


def _health(api: Api) -> dict:
    return requests.get(api.url + "/healthz", headers=api.headers, timeout=2).json()
