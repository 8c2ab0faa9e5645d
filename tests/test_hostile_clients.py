"""Slow and hostile clients cost memory within bounds, never a stream slot or another user's answer."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.conftest import HTTP_TIMEOUT, LOCAL_TOKEN, Api, wait_for
from tests.fake_ollama import Script


def _port(api: Api) -> int:
    return int(api.url.rsplit(":", 1)[1])


def test_a_client_that_stops_reading_holds_no_slot_and_blocks_no_one(make_app, make_server, fake):
    # a stream blocked on a full socket would keep its slot and waitress thread forever
    big = ["x" * 1000] * 150  # 150 kB of answer, far more than the socket buffers hold
    fake.push(Script(tokens=big), Script(tokens=3))
    app = make_app(max_streams=2)
    api = Api(make_server(app).url)
    sid = api.session()
    with socket.create_connection(("127.0.0.1", _port(api)), timeout=5) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        body = b'{"content": "never read"}'
        stuck.sendall(
            f"POST /api/sessions/{sid}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {LOCAL_TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        registry = app.extensions["jarvis"].registry
        wait_for(
            lambda: fake.chat_calls() and registry.live() == [], timeout=5, what="the unread stream to end"
        )
        other = api.session()
        assert api.send(other, "hello").end()["status"] == "completed"
        answer = api.messages(sid)[-1]
        assert answer["status"] == "completed" and len(answer["content"]) == 150_000


@pytest.mark.timeout(30)
def test_slow_headers_and_endless_bodies_are_cut_off_without_starving_streams(make_app, make_server, fake):
    fake.script(Script(tokens=3))
    server = make_server(make_app(), channel_timeout=1, cleanup_interval=1)
    api = Api(server.url)
    slow = []
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", _port(api)), timeout=5)
        if i % 2:
            s.sendall(b"POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # headers never end
        else:
            s.sendall(b"POST /api/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
        slow.append(s)
    try:
        assert api.send(api.session(), "x").end()["status"] == "completed"
        deadline = time.monotonic() + 10
        for s in slow:  # waitress closes each once it has been idle for channel_timeout
            s.settimeout(max(0.1, deadline - time.monotonic()))
            assert s.recv(4096) == b""
    finally:
        for s in slow:
            s.close()


@pytest.mark.timeout(60)
def test_a_thousand_idle_connections_do_not_starve_streams(make_app, make_server, fake):
    fake.script(Script(tokens=5))
    api = Api(make_server(make_app(), connection_limit=1200).url)
    idle = [socket.create_connection(("127.0.0.1", _port(api)), timeout=5) for _ in range(1000)]
    try:
        began = time.monotonic()
        assert requests.get(api.url + "/healthz", timeout=HTTP_TIMEOUT).status_code == 200
        assert api.send(api.session(), "x").end()["status"] == "completed"
        assert time.monotonic() - began < 3
    finally:
        for s in idle:
            s.close()
