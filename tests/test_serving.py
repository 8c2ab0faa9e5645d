"""``jarvis serve`` as a server: how it learns that a client left, how it listens."""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import stat
import subprocess
import time

import pytest
import requests

from tests.conftest import (
    HTTP_TIMEOUT,
    ROOT,
    Api,
    clean_env,
    free_port,
    jarvis_command,
    read_line,
    serve_process,
    stop_process,
)
from tests.fake_ollama import Script
from tests.test_proxy import NGINX, doc_location, nginx  # noqa: F401  (a fixture)
from tests.test_security import PASSWORD

STATES = {
    "streaming": Script(tokens=100_000, interval_s=0.02),
    "stalled": Script(tokens=5, stall_after=2),
    "loading": Script(load_delay_s=30),
}


def _env(fake, tmp_path, **extra) -> dict:
    settings = dict(JARVIS_OLLAMA_URL=fake.url, JARVIS_MODEL="tiny", JARVIS_BACKEND="ollama")
    return clean_env(**{**settings, "JARVIS_DATABASE": str(tmp_path / "serve.sqlite3"), **extra})


@pytest.mark.slow  # a server process of its own
@pytest.mark.timeout(60)
def test_a_client_that_closes_during_silence_closes_the_upstream_at_once(fake, tmp_path):
    # would hang on for the whole poll interval (30 s here) and the whole heartbeat: only the
    # channel's own close event can end the answer in time
    env = _env(fake, tmp_path, JARVIS_DISCONNECT_POLL="30", JARVIS_HEARTBEAT="30")
    proc, api = serve_process(env)
    try:
        for n, (state, script) in enumerate(STATES.items()):
            fake.push(script)
            sse = api.send(api.session(), state)
            sse.until("token" if state != "loading" else "status")
            call = fake.wait_for_calls(n + 1)[n]
            left = time.monotonic()
            sse.close()
            assert call.wait_closed(5), f"{state}: the upstream stayed open"
            took = call.closed_at - left
            assert took < 0.1, f"{state}: the upstream closed {took * 1000:.0f} ms after the client left"
    finally:
        stop_process(proc)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket, as a reverse proxy on the same machine speaks to Jarvis."""

    def __init__(self, path: str):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def _serve_unix(env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        jarvis_command("serve", "--port", env.pop("PORT")),
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = read_line(proc, 20)
    assert f"listening on unix:{env['JARVIS_LISTEN_UNIX']}" in line, line
    return proc


@pytest.mark.slow  # a server process of its own
@pytest.mark.timeout(60)
def test_serve_listens_on_a_unix_socket_only_and_nobody_else_may_connect(fake, tmp_path):
    # would be lost: the proxy's word on who the client is, when any user of the machine can
    # reach a TCP port that believes X-Forwarded-For from 127.0.0.1
    path, port = str(tmp_path / "jarvis.sock"), free_port()
    env = _env(fake, tmp_path, JARVIS_LISTEN_UNIX=path, JARVIS_TRUSTED_PROXIES="127.0.0.1", PORT=str(port))
    proc = _serve_unix(env)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660  # the owner and the proxy's group
        conn = UnixHTTPConnection(path)
        conn.request("GET", "/api/sessions")
        answer = conn.getresponse()
        # served, and not as a local client: whoever comes through the socket came through the proxy
        assert answer.status == 403 and json.loads(answer.read())["error"]["code"] == "protected_mode"
        conn.close()
        with pytest.raises(ConnectionRefusedError):  # no TCP port to send a forged header to
            socket.create_connection(("127.0.0.1", port), timeout=2)
    finally:
        stop_process(proc)
    assert not os.path.exists(path)  # removed at shutdown


@pytest.mark.slow  # nginx
@pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx not installed")
def test_through_nginx_on_the_unix_socket_a_forged_forwarded_for_is_not_the_client(
    make_app,
    make_server,
    fake,
    nginx,  # noqa: F811  (the fixture imported above)
    tmp_path,
    caplog,
):
    # would be lost: the address sign-in attempts are counted against, if a forged
    # X-Forwarded-For were believed (an attacker could lock another address out, or rotate)
    path = str(tmp_path / "jarvis.sock")
    app = make_app(trusted_proxies="127.0.0.1")
    app.extensions["jarvis"].accounts.add("ann", PASSWORD)
    make_server(app, unix_socket=path)
    # docs/deployment.md's location block, with the proxy on the Unix socket
    url = nginx(0, doc_location("## Behind nginx or Caddy", f"http://unix:{path}:"))
    caplog.set_level(logging.INFO, logger="jarvis")
    wrong = {"name": "ann", "password": "wrong-password"}
    r = requests.post(
        url + "/login", json=wrong, headers={"X-Forwarded-For": "192.0.2.1"}, timeout=HTTP_TIMEOUT
    )
    assert r.status_code == 401
    failed = [rec.fields for rec in caplog.records if getattr(rec, "event", None) == "login_failed"]
    assert [f["address"] for f in failed] == ["127.0.0.1"]  # the peer nginx saw, not the forged hop
    r = requests.post(url + "/login", json={"name": "ann", "password": PASSWORD}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200  # served through the socket


# many Stops at once: each must cost its own answer's cancel, nothing that grows with the others


def test_a_stop_looks_its_answer_up_without_scanning_every_live_stream(make_app, make_server, fake):
    # 64 Stops at once, each scanning 64 live streams twice (authentication, then the route), spend
    # their time under the registry lock and the GIL in front of every upstream's close
    fake.script(Script(load_delay_s=30))
    app = make_app()
    api = Api(make_server(app).url)
    registry = app.extensions["jarvis"].registry
    sessions = [api.session() for _ in range(4)]
    streams = [api.send(sid) for sid in sessions]
    fake.wait_for_calls(len(sessions))
    scans = []
    live = registry.live
    registry.live = lambda: scans.append(1) or live()
    try:
        assert api.stop(sessions[0]) == {"stopped": True}
    finally:
        del registry.live
    assert fake.chat_calls()[0].wait_closed(2)
    assert scans == [], f"a Stop scanned every live stream {len(scans)} times"
    for sse in streams:
        sse.close()
