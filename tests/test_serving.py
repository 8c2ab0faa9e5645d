"""``jarvis serve`` as a server: how it learns that a client left, how it listens."""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
import requests

from jarvis.web.server import BURST_SWITCH_S
from tests.conftest import (
    HTTP_TIMEOUT,
    ROOT,
    SSE,
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


@pytest.mark.timeout(60)
def test_a_stop_closes_its_upstream_in_the_event_loop_while_every_thread_is_busy(make_app, make_server, fake):
    # would hang: two streaming answers hold both of waitress's threads, and a Stop that waits for
    # a thread waits for as long as they stream (here, until the client's read timeout); a Stop the
    # event loop recognises closes its upstream at once, and the answer's end frees the thread
    fake.script(Script(tokens=100_000, interval_s=0.02))
    app = make_app()
    api = Api(make_server(app, threads=2).url)
    sessions = [api.session() for _ in range(2)]  # before the threads are taken
    streams = [api.send(sid) for sid in sessions]
    for sse in streams:
        sse.until("token")
    calls = fake.wait_for_calls(2)
    sent = time.monotonic()
    assert api.stop(sessions[0]) == {"stopped": True}  # answered as ever, once a thread is free
    assert calls[0].wait_closed(2), "the upstream stayed open"
    took = calls[0].closed_at - sent
    assert took < 0.5, f"the upstream closed {took * 1000:.0f} ms after the Stop"
    assert not calls[1].closed.is_set(), "the other answer was stopped too"
    assert streams[0].end()["status"] == "stopped"
    streams[1].close()


@pytest.mark.timeout(60)
def test_stops_that_come_together_end_their_answers_together(make_app, make_server, fake, monkeypatch):
    # a burst's Stops ended a pass at a time: each pass's ends and Stop threads took the GIL from
    # the event loop while it read the rest, and 64 Stops sent within 2 ms took 20-75 ms to read.
    # Here the loop is held on the first Stop until all are sent: the rest are read before any ends
    fake.script(Script(tokens=5, stall_after=2))
    app = make_app()
    server = make_server(app)
    api = Api(server.url)
    sessions = [api.session() for _ in range(6)]
    streams = [api.send(sid) for sid in sessions]
    fake.wait_for_calls(len(sessions))
    all_sent = threading.Event()
    channel = server._waitress.channel_class
    stoppable = channel.stoppable

    def held_on_the_first(self, request):  # the loop, busy with one Stop while the others arrive
        found = stoppable(self, request)
        if found is not None:
            all_sent.wait(5)
        return found

    monkeypatch.setattr(channel, "stoppable", held_on_the_first)
    ended, switching = [], []
    stop_held = server._stop_held

    def noted() -> None:
        ended.append(len(server._held))
        switching.append(sys.getswitchinterval())
        stop_held()

    usual = sys.getswitchinterval()
    monkeypatch.setattr(server, "_stop_held", noted)
    clients = [http.client.HTTPConnection(*server.url[7:].split(":"), timeout=5) for _ in sessions]
    for client, sid in zip(clients, sessions, strict=True):
        client.request("POST", f"/api/sessions/{sid}/stop", headers=api.headers)
    all_sent.set()
    answers = [json.loads(client.getresponse().read()) for client in clients]
    assert answers == [{"stopped": True}] * len(sessions)
    assert [n for n in ended if n] == [len(sessions)], "the Stops were ended a few at a time"
    # while it ends them, no thread waiting for the GIL makes the loop hand it over every 5 ms
    assert switching[ended.index(len(sessions))] == pytest.approx(BURST_SWITCH_S)
    assert sys.getswitchinterval() == usual, "the interpreter's switch interval stayed raised"
    for client, sse in zip(clients, streams, strict=True):
        client.close()
        sse.close()


@pytest.mark.timeout(60)
def test_a_stop_ended_in_the_event_loop_is_logged_once(make_app, make_server, fake, caplog):
    # the loop collects its cancels' lines and the Stop's thread writes them: a line never
    # written would lose the record of why the answer ended, two would tell it twice
    caplog.set_level(logging.INFO, logger="jarvis")
    fake.script(Script(tokens=5, stall_after=2))
    api = Api(make_server(make_app()).url)
    sid = api.session()
    sse = api.send(sid)
    trace = sse.until("start")["trace_id"]
    fake.wait_for_calls(1)
    assert api.stop(sid) == {"stopped": True}
    assert sse.end()["status"] == "stopped"
    lines = [r for r in caplog.records if getattr(r, "event", None) == "stream_stopped"]
    assert [r.fields["trace_id"] for r in lines] == [trace]
    assert lines[0].threadName == "jarvis-waitress-loop", "the Stop was not ended in the event loop"


@pytest.mark.timeout(60)
def test_a_stop_the_route_would_refuse_never_cancels_in_the_event_loop(make_app, make_server, fake):
    # would be lost: the answer, to a forged or foreign Stop, if the event loop cancelled on less
    # than the route checks (a cookie without its CSRF header, another site's origin, a Host we do
    # not answer to, another user's token, no credential); each is refused as before, answer intact
    fake.script(Script(load_delay_s=30))
    app = make_app()
    accounts = app.extensions["jarvis"].accounts
    accounts.add("ann", PASSWORD)
    accounts.add("bob", PASSWORD)
    bob = {"Authorization": "Bearer " + accounts.create_token("bob", "laptop")}
    url = make_server(app).url
    ann = requests.Session()
    signed = ann.post(url + "/login", json={"name": "ann", "password": PASSWORD}, timeout=HTTP_TIMEOUT)
    csrf = {"X-CSRF-Token": signed.json()["csrf_token"]}
    sid = ann.post(url + "/api/sessions", headers=csrf, timeout=HTTP_TIMEOUT).json()["id"]
    sent = ann.post(f"{url}/api/sessions/{sid}/messages", json={"content": "x"}, headers=csrf, stream=True)
    sse = SSE(sent)
    sse.until("start")
    call = fake.wait_for_calls(1)[0]
    stop = f"{url}/api/sessions/{sid}/stop"
    refused = {
        "cookie, no CSRF header": (ann, {}, 403),
        "cookie, another site": (ann, {**csrf, "Origin": "http://evil.example"}, 403),
        "cookie, a cross-site fetch": (ann, {**csrf, "Sec-Fetch-Site": "cross-site"}, 403),
        "cookie, a Host not ours": (ann, {**csrf, "Host": "evil.example"}, 403),
        "another user's token": (requests, bob, 404),
        "no credential": (requests, {}, 401),
    }
    for what, (client, headers, status) in refused.items():
        r = client.post(stop, headers=headers, timeout=HTTP_TIMEOUT)
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        assert not call.closed.is_set(), f"{what}: the answer was stopped"
    r = ann.post(stop, headers=csrf, timeout=HTTP_TIMEOUT)
    assert r.json() == {"stopped": True}
    assert call.wait_closed(2)
    assert sse.end()["status"] == "stopped"


@pytest.mark.timeout(60)
def test_behind_the_proxy_a_stop_from_the_other_scheme_never_cancels_in_the_event_loop(
    make_app, make_server, fake, tmp_path
):
    # would be lost: the answer, to a page on http:// stopping one signed in on https://, if the
    # event loop judged the origin without the proxy's X-Forwarded-Proto (waitress's middleware)
    fake.script(Script(load_delay_s=30))
    path = str(tmp_path / "jarvis.sock")
    app = make_app(trusted_proxies="127.0.0.1")
    app.extensions["jarvis"].accounts.add("ann", PASSWORD)
    make_server(app, unix_socket=path)
    https = {"X-Forwarded-For": "192.0.2.7", "X-Forwarded-Proto": "https", "Host": "localhost"}

    def post(url: str, headers: dict, body: dict | None = None) -> http.client.HTTPResponse:
        conn = UnixHTTPConnection(path)
        conn.request("POST", url, body=json.dumps(body or {}), headers={**https, **headers})
        return conn.getresponse()

    signed = post("/login", {"Content-Type": "application/json"}, {"name": "ann", "password": PASSWORD})
    cookie = signed.getheader("Set-Cookie").split(";")[0]
    ann = {"Cookie": cookie, "X-CSRF-Token": json.loads(signed.read())["csrf_token"]}
    sid = json.loads(post("/api/sessions", ann).read())["id"]
    conn = UnixHTTPConnection(path)
    json_ann = {**https, **ann, "Content-Type": "application/json"}
    conn.request("POST", f"/api/sessions/{sid}/messages", body='{"content": "x"}', headers=json_ann)
    streaming = conn.getresponse()  # kept open: a closed client ends its answer as disconnected
    assert streaming.status == 200
    call = fake.wait_for_calls(1)[0]
    r = post(f"/api/sessions/{sid}/stop", {**ann, "Origin": "http://localhost"})
    assert r.status == 403, r.read()
    assert not call.closed.is_set(), "a Stop from http:// stopped the answer"
    r = post(f"/api/sessions/{sid}/stop", {**ann, "Origin": "https://localhost"})
    assert json.loads(r.read()) == {"stopped": True}
    assert call.wait_closed(2)
    streaming.close()
    conn.close()
