"""Tool sources: MCP servers behind ToolBox, bounded and cancellable, leaving no process behind.

Each test runs tests/fake_mcp.py (a real MCP server built with the SDK) as a child process. A
``--tag`` argument unique to the test marks its processes, so /proc tells whether any survived.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import uuid

import pytest

from jarvis.cancel import CancelScope
from jarvis.config import Config, ConfigError
from jarvis.conversation import ToolCall
from jarvis.tools import ToolBox, ToolResult

# slow by the suite's rule: these tests start MCP server processes of their own (about 0.6 s of a
# core each, for the SDK's import), as the README says of every test marked slow
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def tagged(tag: str) -> list[int]:
    """Pids of every live process (ours or orphaned) whose command line carries ``tag``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if tag.encode() in cmdline and state != "Z":
            found.append(int(pid))
    return found


class Fake:
    """A config file naming fake MCP servers, their logs, and the ToolBox built from it."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.tag = f"fake-mcp-{uuid.uuid4().hex[:12]}"
        self.servers: dict = {}
        self.box: ToolBox | None = None

    def add(self, name: str, eager: bool = False, **env) -> str:
        log = str(self.tmp / f"{name}.log")
        env = {"FAKE_MCP_LOG": log, "PYTHONPATH": ROOT, **env}
        args = ["-m", "tests.fake_mcp", self.tag]
        self.servers[name] = {"command": sys.executable, "args": args, "env": env, "eager": eager}
        return log

    def start(self, **settings) -> ToolBox:
        path = self.tmp / "mcp.json"
        path.write_text(json.dumps({"mcpServers": self.servers}))
        settings = {"mcp_config": str(path), "tool_timeout_s": 10.0, "tool_start_timeout_s": 15.0} | settings
        self.box = ToolBox.from_config(Config.from_env({}, settings))
        return self.box

    def started(self, *names: str, **settings) -> ToolBox:
        """A box whose servers (``names``, else one named fake) are up, their tools listed."""
        for name in names or ("fake",):
            self.add(name)
        box = self.start(**settings)
        box.tools(15.0)
        return box

    def events(self, name: str) -> list[dict]:
        try:
            with open(self.tmp / f"{name}.log") as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def wait_event(self, name: str, event: str, count: int = 1) -> dict:
        return wait_for(
            lambda: ([e for e in self.events(name) if e["event"] == event][count - 1 :] or [None])[0],
            10.0,
            f"{name} to log {event}",
        )


@pytest.fixture
def fake(tmp_path):
    f = Fake(tmp_path)
    yield f
    if f.box is not None:
        assert f.box.close(5.0) == []
    wait_for(lambda: not tagged(f.tag), 3.0, "every fake MCP server process to end")


def mcp_server_time() -> str:
    """The real MCP server from PyPI, installed beside this Python; the test is skipped without it."""
    program = shutil.which("mcp-server-time", path=os.path.dirname(sys.executable))
    if program is None:
        pytest.skip("mcp-server-time is not installed (pip install mcp-server-time)")
    return program


def call(box: ToolBox, name: str, cancel: CancelScope | None = None, **arguments) -> ToolResult:
    return box.call(ToolCall("call_1", name, json.dumps(arguments)), cancel or CancelScope())


def cancel_when(fake: Fake, server: str, event: str) -> CancelScope:
    """A scope cancelled as soon as ``server`` logs ``event`` (the tool is running)."""
    scope = CancelScope()
    seen = len([e for e in fake.events(server) if e["event"] == event])

    def watch():
        fake.wait_event(server, event, seen + 1)
        scope.cancel("stopped")

    threading.Thread(target=watch, name="cancel-when").start()
    return scope


def test_unset_config_means_no_toolbox():
    assert ToolBox.from_config(Config.from_env({})) is None


def test_malformed_config_names_the_server(tmp_path):
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"bad__name": {"command": "x"}}}))
    with pytest.raises(ConfigError, match="bad__name"):
        ToolBox.from_config(Config.from_env({}, {"mcp_config": str(path)}))


def test_tools_are_named_server__tool_and_described(fake):
    fake.add("fake")
    box = fake.start()
    assert box.describe()[0]["state"] == "not started"
    tools = {t.name: t for t in box.tools(15.0)}
    assert "fake__echo" in tools and "fake__sleep" in tools
    assert tools["fake__echo"].parameters["properties"]["text"]["type"] == "string"
    assert tools["fake__echo"].description == "Answer the text it was given."
    (entry,) = box.describe()
    assert entry["server"] == "fake" and entry["transport"] == "stdio" and entry["state"] == "ready"
    assert {"name": "echo", "description": "Answer the text it was given."} in entry["tools"]


def test_a_call_answers(fake):
    fake.add("fake")
    box = fake.start()
    result = call(box, "fake__echo", text="hello")
    assert result == ToolResult("hello", False, result.duration_ms)
    assert call(box, "nobody__echo").is_error


@pytest.mark.timeout(20)
def test_a_call_past_the_timeout_is_an_error_result(fake):
    # would hang: a call waiting for a tool that sleeps 60 s
    box = fake.started(tool_timeout_s=1.0)
    result = call(box, "fake__sleep", seconds=60)
    assert result.is_error and "timed out after 1 s" in result.content
    assert 1000 <= result.duration_ms < 1500


@pytest.mark.timeout(20)
def test_cancel_while_sleeping_returns_at_once_and_the_server_is_told(fake):
    # would hang: a Stop waiting for a 60 s tool
    box = fake.started()
    scope = cancel_when(fake, "fake", "sleeping")
    result = call(box, "fake__sleep", scope, seconds=60)
    returned = time.monotonic()
    assert result.is_error and "cancelled" in result.content
    fake.wait_event("fake", "cancelled")  # the SDK sent notifications/cancelled
    assert call(box, "fake__echo", text="still here").content == "still here"
    assert len([e for e in fake.events("fake") if e["event"] == "started"]) == 1
    assert time.monotonic() - returned < 10


@pytest.mark.timeout(20)
def test_cancel_returns_within_50_ms(fake):
    box = fake.started()
    scope = CancelScope()
    fired = []
    scope.on_cancel(lambda: fired.append(time.monotonic()))
    cancel = cancel_when(fake, "fake", "sleeping")
    cancel.on_cancel(lambda: scope.cancel("stopped"))
    call(box, "fake__sleep", scope, seconds=60)
    assert (time.monotonic() - fired[0]) * 1000 < 50


@pytest.mark.timeout(30)
def test_cancel_while_the_server_ignores_it_stops_and_restarts_the_server(fake):
    # would hang or leak: a server blocked in its tool answers neither the cancel nor a ping
    box = fake.started(tool_cancel_timeout_s=0.3)
    (first,) = tagged(fake.tag)
    scope = cancel_when(fake, "fake", "sleeping")
    cancelled = time.monotonic()
    assert call(box, "fake__sleep_ignoring_cancel", scope, seconds=60).is_error
    wait_for(lambda: first not in tagged(fake.tag), 3.0, "the blocked server to be stopped")
    stopped_after = time.monotonic() - cancelled
    assert stopped_after < 0.3 + 0.5 + 1.0  # the ping's bound, terminate's grace, slack for load
    assert box.describe()[0]["error"]["code"] == "tool_server_restarted"
    assert call(box, "fake__echo", text="again").content == "again"
    assert len(tagged(fake.tag)) == 1 and first not in tagged(fake.tag)


@pytest.mark.timeout(30)
def test_a_crash_is_an_error_and_the_next_call_restarts_the_server(fake):
    fake.add("fake")
    box = fake.start()
    result = call(box, "fake__crash")
    assert result.is_error and "exited with code 3" in result.content
    assert box.describe()[0]["state"] == "failed"
    assert call(box, "fake__echo", text="back").content == "back"
    assert box.describe()[0]["state"] == "ready"


def test_a_flood_is_cut_to_the_limit(fake):
    fake.add("fake")
    box = fake.start(tool_result_max_chars=1000)
    result = call(box, "fake__flood", chars=2_000_000)
    assert not result.is_error
    assert result.content.startswith("x" * 1000) and "x" * 1001 not in result.content
    assert "cut: the result was 2000000 characters" in result.content


@pytest.mark.timeout(20)
def test_garbage_on_stdout_is_an_error_not_a_hang(fake):
    # would hang: the call's answer never comes after the server wrote non-JSON
    box = fake.started(tool_timeout_s=8.0)
    result = call(box, "fake__garbage")
    assert result.is_error and "not JSON-RPC" in result.content
    assert result.duration_ms < 2000
    assert call(box, "fake__echo", text="ok").content == "ok"


@pytest.mark.timeout(20)
def test_a_server_hung_at_start_up_is_described_as_failed(fake):
    # would hang: waiting for an initialize answer that never comes
    fake.add("hung", FAKE_MCP_HANG_START="1")
    box = fake.start(tool_start_timeout_s=1.0)
    started = time.monotonic()
    assert box.tools(5.0) == []
    assert time.monotonic() - started < 2.5
    (entry,) = box.describe()
    assert entry["state"] == "failed" and "within 1 s" in entry["error"]["message"]
    wait_for(lambda: not tagged(fake.tag), 3.0, "the hung server to be killed")
    assert call(box, "hung__echo", text="x").is_error


@pytest.mark.timeout(30)
def test_a_hung_server_never_delays_another(fake):
    fake.add("hung", eager=True, FAKE_MCP_HANG_START="1")
    fake.add("good")
    box = fake.start(tool_start_timeout_s=10.0)
    fake.wait_event("hung", "started")  # started eagerly, and stuck before it answers
    started = time.monotonic()
    names = {t.name for t in box.tools(3.0)}
    assert "good__echo" in names and not any(n.startswith("hung__") for n in names)
    states = {e["server"]: e["state"] for e in box.describe()}
    assert states == {"hung": "not started", "good": "ready"}
    assert call(box, "good__echo", text="fast").content == "fast"
    assert time.monotonic() - started < 4.5


@pytest.mark.timeout(30)
def test_calls_to_one_server_run_concurrently(fake):
    box = fake.started()
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(call(box, "fake__sleep", seconds=1.0)))
        for _ in range(2)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [r.content for r in results] == ["slept 1.0", "slept 1.0"]
    assert time.monotonic() - started < 1.9


@pytest.mark.timeout(30)
def test_close_leaves_no_process_even_mid_call(fake):
    box = fake.started("one", "two")
    assert len(tagged(fake.tag)) == 2
    running = threading.Thread(target=lambda: call(box, "one__sleep_ignoring_cancel", seconds=60))
    running.start()
    fake.wait_event("one", "sleeping")
    started = time.monotonic()
    assert box.close(5.0) == []
    assert time.monotonic() - started < 3.0
    assert tagged(fake.tag) == []
    running.join(12)
    assert not running.is_alive()
    fake.box = None


def test_a_stdio_server_sees_only_its_own_environment(fake, monkeypatch):
    monkeypatch.setenv("JARVIS_SECRET_KEY_PROBE", "do-not-leak")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    fake.add("fake", GIVEN="yes")
    box = fake.start()
    names = set(json.loads(call(box, "fake__env").content))
    assert "GIVEN" in names and "FAKE_MCP_LOG" in names
    assert not {n for n in names if n.startswith("JARVIS_")}
    assert "OPENAI_API_KEY" not in names
    assert names <= {"PATH", "HOME", "LANG", "GIVEN", "FAKE_MCP_LOG", "PYTHONPATH"}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_the_real_mcp_server_time_end_to_end(tmp_path):
    program = mcp_server_time()
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps({"mcpServers": {"time": {"command": program, "args": ["--local-timezone=UTC"]}}})
    )
    box = ToolBox.from_config(Config.from_env({}, {"mcp_config": str(path), "tool_start_timeout_s": 30.0}))
    try:
        names = {t.name for t in box.tools(30.0)}
        assert "time__get_current_time" in names, box.describe()
        result = call(box, "time__get_current_time", timezone="UTC")
        assert not result.is_error and '"timezone": "UTC"' in result.content
    finally:
        assert box.close(5.0) == []


@pytest.mark.timeout(40)
def test_a_streamable_http_server_answers_and_a_cancel_returns_at_once(fake, tmp_path):
    # the other transport of the config file: {"url": ...}; a Stop mid-call must not wait for it
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = str(tmp_path / "web.log")
    env = {**os.environ, "PYTHONPATH": ROOT, "FAKE_MCP_LOG": log, "FAKE_MCP_HTTP_PORT": str(port)}
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_mcp", fake.tag], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def listening():
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 15.0, "the HTTP MCP server to listen")
        fake.servers["web"] = {"url": f"http://127.0.0.1:{port}/mcp"}
        box = fake.start()
        assert "web__echo" in {t.name for t in box.tools(15.0)}
        assert [s["transport"] for s in box.describe()] == ["http"]
        assert call(box, "web__echo", text="over http").content == "over http"
        scope = CancelScope()
        fired = []
        scope.on_cancel(lambda: fired.append(time.monotonic()))

        def stop_when_sleeping():
            wait_for(lambda: "sleeping" in open(log).read() if os.path.exists(log) else False, 10.0, "sleep")
            scope.cancel("stopped")

        watcher = threading.Thread(target=stop_when_sleeping)
        watcher.start()
        result = call(box, "web__sleep", scope, seconds=60)
        watcher.join(10)
        assert result.is_error and (time.monotonic() - fired[0]) * 1000 < 50
    finally:
        server.terminate()
        server.wait(10)
