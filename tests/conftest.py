"""Fixtures: a fake Ollama, the app, the real app under waitress, and a leak check."""

from __future__ import annotations

import importlib
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest
import requests
import werkzeug.security
from flask import Flask
from flask.testing import FlaskClient

import jarvis.web.accounts
from jarvis import create_app, sse
from jarvis.config import Config, ConfigError
from jarvis.web.server import Server
from tests import postgres
from tests.fake_ollama import FakeOllama
from tests.fake_openai import FakeOpenAI

# bounds every HTTP wait in the tests: a hang fails fast instead of at the test timeout
HTTP_TIMEOUT = (2, 5)
# the local token of every test server: no request is served without a credential
LOCAL_TOKEN = "test-local-token-0123456789abcdefghijklmnopqrstuv"


def pytest_addoption(parser):
    parser.addoption("--soak-seconds", type=float, default=25.0, help="how long the chaos soak runs")
    parser.addoption("--soak-seed", type=int, default=None, help="replay the chaos soak with this seed")


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.005, what: str = "condition"):
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        threading.Event().wait(interval)


def config_refuses(variable: str, value: str, says: str = "") -> None:
    """Config refuses ``value`` for ``variable``, with an error that says ``says`` (else names it)."""
    with pytest.raises(ConfigError, match=says or variable):
        Config.from_env({variable: value})


FAKES = {"ollama": FakeOllama, "openai": FakeOpenAI}
# run a test against each fake upstream: Ollama's protocol and the OpenAI-compatible one
both_upstreams = pytest.mark.parametrize("fake", list(FAKES), indirect=True)


def test_config(fake: FakeOllama, tmp_path, **overrides) -> dict:
    where = {"ollama_url": fake.url} if fake.kind == "ollama" else {"openai_url": fake.url + "/v1"}
    return {
        "backend": fake.kind,
        **where,
        "model": "tiny",
        "database": str(tmp_path / "jarvis.sqlite3"),
        "instance_dir": str(tmp_path / "instance"),
        "local_token": LOCAL_TOKEN,
        "heartbeat_s": 0.2,
        "first_token_timeout_s": 10.0,
        "idle_timeout_s": 10.0,
        **overrides,
    }


test_config.__test__ = False  # a helper, not a test


_apps: list[Flask] = []


@pytest.fixture(scope="session", autouse=True)
def local_token_in_environment():
    """Commands the tests run find the test servers' local token, as they find a real one's file."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JARVIS_LOCAL_TOKEN", LOCAL_TOKEN)
        yield


class _PasswordHashes:
    """``generate_password_hash`` for the tests: a password's hash is made once per run, then handed out
    once a test.

    Nearly every test makes an account with one of a few passwords, and each scrypt hash takes about
    0.1 s of a core (the everyday run spent more time hashing than anything else). The hash handed out
    is werkzeug's own, salted, at its default cost, and every sign-in checks it for real; within one
    test a password's second account gets a fresh salt, as it would in production."""

    def __init__(self):
        self.made: dict[str, str] = {}
        self.given: set[str] = set()  # the passwords whose made hash this test already has
        self.lock = threading.Lock()  # accounts are made on server threads too

    def __call__(self, password: str, *args, **kwargs) -> str:
        with self.lock:
            fresh = bool(args or kwargs) or password in self.given
            if not fresh:
                self.given.add(password)
                if password not in self.made:
                    self.made[password] = werkzeug.security.generate_password_hash(password)
                return self.made[password]
        return werkzeug.security.generate_password_hash(password, *args, **kwargs)

    def new_test(self) -> None:
        with self.lock:
            self.given.clear()


_password_hashes = _PasswordHashes()


@pytest.fixture(scope="session", autouse=True)
def password_hashes_made_once():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jarvis.web.accounts, "generate_password_hash", _password_hashes)
        yield


@pytest.fixture(autouse=True)
def no_leaks():
    """No thread and no registry entry outlives a test."""
    before = set(threading.enumerate())
    _apps.clear()
    _password_hashes.new_test()
    yield
    try:
        wait_for(lambda: not (set(threading.enumerate()) - before), timeout=5.0, what="test threads to end")
    except AssertionError:
        left = sorted(t.name for t in set(threading.enumerate()) - before)
        raise AssertionError(f"threads outlived the test: {left}") from None
    for app in _apps:
        assert app.extensions["jarvis"].registry.live() == [], "registry entries outlived the test"


@pytest.fixture
def fake(request):
    """The fake Ollama, or with ``both_upstreams`` each fake upstream in turn."""
    with FAKES[getattr(request, "param", "ollama")]() as f:
        yield f


@pytest.fixture
def database(tmp_path) -> str:
    """Where the apps of a test keep their history: a SQLite file, or a PostgreSQL URL where overridden."""
    return str(tmp_path / "jarvis.sqlite3")


def _started_postgres(**stopping):
    """A PostgreSQL server, stopped and removed after the fixture; skips when it cannot run here."""
    why = postgres.missing()
    if why:
        pytest.skip(why)
    server = postgres.PostgresServer().start()
    yield server
    server.stop("immediate", **stopping)
    server.remove()


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the whole run, started on first use."""
    yield from _started_postgres()


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of the test's own, which it may stop and start."""
    yield from _started_postgres(missing_ok=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh empty database on the shared server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def make_app(fake, tmp_path, database):
    """Build apps against the fake; each is shut down after the test."""
    made = []

    def make(**overrides) -> Flask:
        app = create_app(test_config(fake, tmp_path, **{"database": database, **overrides}))
        app.test_client_class = LocalClient
        made.append(app)
        _apps.append(app)
        return app

    yield make
    for app in made:
        assert app.extensions["jarvis"].shutdown(5.0) == []


@pytest.fixture
def app(make_app) -> Flask:
    return make_app()


class LocalClient(FlaskClient):
    """A test client that sends the local token, as scripts on this machine do."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {LOCAL_TOKEN}"


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_server():
    """Serve an app under waitress on a free loopback port, as ``jarvis serve`` does."""
    servers = []

    def make(app: Flask, **adj) -> Server:
        server = Server(app, host="127.0.0.1", port=0, **adj).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        assert server.shutdown(5.0) == []


@dataclass
class Live:
    url: str
    fake: FakeOllama
    app: Flask
    server: Server


@pytest.fixture
def jarvis_settings() -> dict[str, str]:
    """JARVIS_* variables of the real app beyond the tests' own: a module overrides this to add some."""
    return {}


@pytest.fixture
def jarvis_server(fake, tmp_path, monkeypatch, make_server, database, jarvis_settings):
    """The real ``wsgi:app``, built from JARVIS_* variables, under waitress."""
    for key, value in test_config(fake, tmp_path, database=database).items():
        monkeypatch.setenv("JARVIS_" + key.upper().removesuffix("_S"), str(value))
    for name, value in jarvis_settings.items():
        monkeypatch.setenv(name, value)
    if "wsgi" in sys.modules:  # each app probes its upstream in a thread: build just one
        app = importlib.reload(sys.modules["wsgi"]).app
    else:
        app = importlib.import_module("wsgi").app
    _apps.append(app)
    server = make_server(app)
    yield Live(server.url, fake, app, server)


@pytest.fixture
def api(jarvis_server):
    return Api(jarvis_server.url)


class Api:
    """A small client of the Jarvis HTTP API with bounded waits."""

    def __init__(self, url: str, token: str | None = LOCAL_TOKEN):
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def session(self) -> str:
        r = requests.post(self.url + "/api/sessions", headers=self.headers, timeout=HTTP_TIMEOUT)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def send(self, session: str, content: str = "hello", **body) -> SSE:
        r = requests.post(
            f"{self.url}/api/sessions/{session}/messages",
            json={"content": content, **body},
            headers=self.headers,
            stream=True,
            timeout=HTTP_TIMEOUT,
        )
        return SSE(r)

    def answering(self, content: str = "hello", **body) -> tuple[str, SSE]:
        """A new session whose answer is streaming: its id, and the prompt's response past a token."""
        session = self.session()
        sse = self.send(session, content, **body)
        sse.until("token")
        return session, sse

    def attach(self, session: str, last_event_id: str | None = None) -> SSE:
        """GET the session's live answer (status 204 when none is live)."""
        headers = {**self.headers, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        r = requests.get(
            f"{self.url}/api/sessions/{session}/stream", headers=headers, stream=True, timeout=HTTP_TIMEOUT
        )
        return SSE(r)

    def stop(self, session: str) -> dict:
        r = requests.post(
            f"{self.url}/api/sessions/{session}/stop", headers=self.headers, timeout=HTTP_TIMEOUT
        )
        assert r.status_code == 200, r.text
        return r.json()

    def messages(self, session: str) -> list[dict]:
        r = requests.get(f"{self.url}/api/sessions/{session}", headers=self.headers, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()["messages"]


class SSE:
    """Reads one SSE response event by event; every read is bounded by HTTP_TIMEOUT."""

    def __init__(self, response: requests.Response):
        self.response = response
        self.status_code = response.status_code
        self.events: list[tuple[str, dict]] = []
        self.ids: list[str | None] = []  # each event's SSE id, beside self.events
        self.comments = 0
        self._parser = sse.Parser()
        self._chunks = response.iter_content(chunk_size=None) if response.status_code == 200 else iter(())
        self._ready: list[sse.Frame] = []  # parsed, not yet read

    def next(self) -> tuple[str, dict] | None:
        while not self._ready:
            chunk = next(self._chunks, None)
            if chunk is None:
                return None
            self._ready = self._parser.feed(chunk)
            self.comments = self._parser.comments
        frame = self._ready.pop(0)
        self.events.append((frame.event, frame.json()))
        self.ids.append(frame.id)
        return self.events[-1]

    def until(self, wanted: str) -> dict:
        while (event := self.next()) is not None:
            if event[0] == wanted:
                return event[1]
        raise AssertionError(f"stream ended without a {wanted!r} event: {self.events}")

    def rest(self) -> list[tuple[str, dict]]:
        while self.next() is not None:
            pass
        return self.events

    def end(self) -> dict:
        events = self.rest()
        ends = [e for e in events if e[0] == "end"]
        assert len(ends) == 1 and events[-1][0] == "end", f"not exactly one end, last: {events}"
        return {k: v for k, v in ends[0][1].items() if k != "meta"}  # meta (usage, timing): end_meta()

    def end_meta(self) -> dict:
        self.end()
        return next(d for n, d in self.events if n == "end").get("meta", {})

    def text(self) -> str:
        return "".join(d["text"] for n, d in self.events if n == "token")

    def close(self) -> None:
        self.response.close()

    def json(self) -> dict:
        return self.response.json()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_outside_sqlite(pid: int | str = "self") -> tuple[int, int]:
    """(descriptors not on a SQLite file, descriptors on one), of this process or ``pid``.

    While one connection to a WAL database is open, SQLite keeps the files of closed connections
    open for reuse: closing them would drop that connection's POSIX locks. Their number is
    bounded by how many connections were open at once, so tests bound them apart."""
    targets = _fd_links(pid)
    database = sum(t.endswith((".sqlite3", ".sqlite3-wal", ".sqlite3-shm")) for t in targets)
    return len(targets) - database, database


def _fd_links(pid: int | str) -> list[str]:
    """What each open descriptor of ``pid`` points at, as /proc shows it."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
    return targets


def _tcp_sockets(pid: int | str) -> dict[str, tuple[int, int]]:
    """The TCP sockets of ``pid``'s network namespace: inode -> (local port, remote port)."""
    sockets = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in cols[1:3])
            sockets[cols[9]] = (local, remote)
    return sockets


def fd_targets(pid: int | str = "self") -> list[str]:
    """What each descriptor of ``pid`` points at, a TCP socket as ``tcp <local port>-><remote port>``:
    to name what a process kept when its count stays up."""
    sockets = _tcp_sockets(pid)
    out = []
    for target in _fd_links(pid):
        ports = sockets.get(target[len("socket:[") : -1]) if target.startswith("socket:[") else None
        out.append(f"tcp {ports[0]}->{ports[1]}" if ports else target)
    return sorted(out)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**settings) -> dict:
    """This process's environment without any JARVIS_* setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JARVIS_")}
    env["JARVIS_LOCAL_TOKEN"] = LOCAL_TOKEN
    env.update(settings)
    return env


def jarvis_command(*args) -> list[str]:
    return [sys.executable, "-m", "jarvis.cli", *args]


def serve_process(
    env: dict, stderr=subprocess.DEVNULL, launcher: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, Api]:
    """Start ``jarvis serve`` (through ``launcher``, a ``python -m`` module and its arguments, if
    given) on a free port; returns once it says it listens there."""
    port = free_port()
    args = ("serve", "--port", str(port))
    command = [sys.executable, "-m", *launcher, *args] if launcher else jarvis_command(*args)
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = read_line(proc, 20)
    assert "listening" in line and f"127.0.0.1:{port}" in line, line
    token = re.search(r"\?token=(\S+)", line)  # the printed address signs in
    return proc, Api(f"http://127.0.0.1:{port}", token.group(1) if token else None)


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of the process's stdout, waiting at most ``timeout`` seconds for it to start."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError(f"no output from {proc.args} within {timeout} s")
    return proc.stdout.readline()  # the server prints and flushes whole lines


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(15)
    if proc.stdout:
        proc.stdout.close()


@dataclass
class Served:
    """A Jarvis server process on a free loopback port, and what a user of it knows."""

    kind: str
    url: str
    token: str | None  # the local token, from the printed address or the token file
    proc: subprocess.Popen
    instance: str


@pytest.fixture(params=["jarvis serve", "waitress"])
def hosted(request, fake, tmp_path):
    """Start Jarvis as ``jarvis serve`` and as plain ``python -m waitress … wsgi:app``: one test, both hosts.

    Call with extra JARVIS_* settings; the local token is generated, as on a fresh machine.
    """
    procs: list[subprocess.Popen] = []

    def start(**settings) -> Served:
        instance = str(tmp_path / "instance")
        env = clean_env(
            JARVIS_OLLAMA_URL=fake.url,
            JARVIS_MODEL="tiny",
            JARVIS_BACKEND="ollama",
            JARVIS_INSTANCE_DIR=instance,
            JARVIS_HEARTBEAT="0.2",
            **settings,
        )
        env.pop("JARVIS_LOCAL_TOKEN", None)
        port = free_port()
        if request.param == "jarvis serve":
            cmd = jarvis_command("serve", "--port", str(port))
        else:
            cmd = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "--threads=8", "wsgi:app"]
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        token = None
        if request.param == "jarvis serve":
            line = proc.stdout.readline()
            assert f"127.0.0.1:{port}" in line, line
            found = re.search(r"\?token=(\S+)", line)
            token = found.group(1) if found else None
        else:

            def up():
                try:
                    return requests.get(url + "/healthz", timeout=HTTP_TIMEOUT).ok
                except requests.ConnectionError:
                    return False

            wait_for(up, timeout=20, what="waitress to answer")
            if os.path.exists(os.path.join(instance, "local_token")):
                token = open(os.path.join(instance, "local_token")).read().strip()
        return Served(request.param, url, token, proc, instance)

    yield start
    for proc in procs:
        stop_process(proc)


@dataclass
class WithAccount:
    """Jarvis under ``jarvis serve``'s server, with one account whose bearer token is ``token``."""

    url: str
    token: str
    app: Flask
    fake: FakeOllama

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def session(self) -> str:
        r = requests.post(self.url + "/api/sessions", headers=self.auth, timeout=HTTP_TIMEOUT)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def messages(self, session: str) -> list[dict]:
        r = requests.get(f"{self.url}/api/sessions/{session}", headers=self.auth, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()["messages"]

    def sessions(self) -> list[dict]:
        r = requests.get(self.url + "/api/sessions", headers=self.auth, timeout=HTTP_TIMEOUT)
        return r.json()["sessions"]

    def idle(self) -> bool:
        return self.app.extensions["jarvis"].registry.active() == 0


@pytest.fixture
def make_served(make_app, make_server, fake):
    def make(**overrides) -> WithAccount:
        app = make_app(**overrides)
        accounts = app.extensions["jarvis"].accounts
        accounts.add("ann", "correct horse battery")
        token = accounts.create_token("ann", "tests")
        return WithAccount(make_server(app).url, token, app, fake)

    return make


@pytest.fixture
def served(make_served) -> WithAccount:
    return make_served()


@pytest.fixture
def oai(served):
    """The official ``openai`` client of ``served``: no retries, every call bounded."""
    import openai

    with openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0, timeout=5) as client:
        yield client


@pytest.fixture
def claude(served):
    """The official ``anthropic`` client of ``served``: no retries, every call bounded."""
    import anthropic

    with anthropic.Anthropic(base_url=served.url, api_key=served.token, max_retries=0, timeout=5) as client:
        yield client
