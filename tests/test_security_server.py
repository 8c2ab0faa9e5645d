"""The security findings, probed over HTTP under both jarvis serve and plain waitress."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time

import pytest
import requests

from tests.conftest import HTTP_TIMEOUT, ROOT, SSE, Served, clean_env, jarvis_command
from tests.fake_ollama import Script

PASSWORD = "correct horse battery"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # server processes of their own


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _cli(server: Served, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run a jarvis command on the server's machine: same instance folder, another process."""
    env = clean_env(JARVIS_INSTANCE_DIR=server.instance)
    env.pop("JARVIS_LOCAL_TOKEN", None)
    out = subprocess.run(
        jarvis_command(*args), env=env, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out


def test_nothing_is_served_without_the_local_token(hosted):
    server = hosted()
    assert server.token and len(server.token) >= 43
    url = server.url
    for method, path in (("get", "/api/sessions"), ("post", "/api/sessions"), ("get", "/metrics")):
        r = getattr(requests, method)(url + path, timeout=HTTP_TIMEOUT)
        assert r.status_code == 401, path
    page = requests.get(url + "/", allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert page.status_code == 302 and page.headers["Location"].endswith("/login")
    assert requests.get(url + "/healthz", timeout=HTTP_TIMEOUT).json() == {
        "status": "ok",
        "upstream_ok": True,
    }
    auth = _bearer(server.token)
    assert requests.post(url + "/api/sessions", headers=auth, timeout=HTTP_TIMEOUT).status_code == 201
    assert requests.get(url + "/metrics", headers=auth, timeout=HTTP_TIMEOUT).status_code == 200


def test_the_printed_address_signs_the_browser_in(hosted):
    server = hosted()
    if server.kind != "jarvis serve":
        pytest.skip("only jarvis serve prints an address")
    browser = requests.Session()
    page = browser.get(f"{server.url}/?token={server.token}", timeout=HTTP_TIMEOUT)
    assert page.status_code == 200 and page.url == server.url + "/"  # the token left the address
    assert browser.get(server.url + "/api/sessions", timeout=HTTP_TIMEOUT).status_code == 200


def test_jarvis_chat_reads_the_local_token_file(hosted, fake):
    server = hosted()
    fake.script(Script(tokens=["Hello"]))
    out = _cli(server, "chat", "--url", server.url, "hi")
    assert out.stdout == "Hello\n"


def _rss_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _post_huge(url: str, path: str, size: int) -> bytes:
    """Send a ``size``-byte form body; returns the response head (early or after the body)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        readable, _, _ = select.select([s], [], [], 0.5)  # a server that answers from the length alone
        if readable:
            return s.recv(4096)
        chunk = b"name=ann&password=" + b"x" * (1 << 20)
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            s.sendall(piece)
            sent += len(piece)
        return s.recv(4096)


def test_a_200_mb_sign_in_is_refused_without_growing_the_process(hosted):
    server = hosted()
    _cli(server, "user", "add", "ann", stdin=PASSWORD + "\n")
    pid = server.proc.pid
    requests.post(server.url + "/login", data={"name": "ann", "password": "warm up"}, timeout=HTTP_TIMEOUT)
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # reset the peak: growth from here on is what the big body costs
    before = _rss_kb(pid, "VmRSS")
    head = _post_huge(server.url, "/login", 200 * 1024 * 1024)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    grown_mb = (_rss_kb(pid, "VmHWM") - before) / 1024
    assert grown_mb < 10, f"the process grew by {grown_mb:.0f} MB"


@pytest.mark.parametrize("revoke", ["token revoke", "user remove", "user passwd"])
def test_a_revocation_by_another_process_ends_live_answers_within_a_second(hosted, fake, revoke):
    # without the revocation watch the answer would run until the model's 60 s load ends
    fake.script(Script(load_delay_s=60))
    server = hosted()
    _cli(server, "user", "add", "ann", stdin=PASSWORD + "\n")
    token = _cli(server, "token", "create", "--user", "ann").stdout.strip()
    http = requests.Session()
    if revoke == "user passwd":  # a signed-in browser: its cookie is the credential
        csrf = http.post(
            server.url + "/login", json={"name": "ann", "password": PASSWORD}, timeout=HTTP_TIMEOUT
        ).json()["csrf_token"]
        http.headers["X-CSRF-Token"] = csrf
    else:
        http.headers.update(_bearer(token))
    sid = http.post(server.url + "/api/sessions", timeout=HTTP_TIMEOUT).json()["id"]
    sse = SSE(
        http.post(
            f"{server.url}/api/sessions/{sid}/messages", json={"content": "x"}, stream=True, timeout=(2, 5)
        )
    )
    sse.until("start")
    call = fake.wait_for_calls(1)[0]
    command = {"token revoke": ("token", "revoke", "1"), "user remove": ("user", "remove", "ann")}
    _cli(server, *command.get(revoke, ("user", "passwd", "ann")), stdin="another password\n")
    revoked_at = time.monotonic()
    assert sse.end() == {"status": "stopped", "reason": "revoked"}
    assert time.monotonic() - revoked_at < 2.0
    assert call.wait_closed(1)
    assert http.get(server.url + "/api/sessions", timeout=HTTP_TIMEOUT).status_code == 401


def test_the_instance_files_of_a_running_server_are_private(hosted):
    server = hosted()
    requests.post(server.url + "/api/sessions", headers=_bearer(server.token), timeout=HTTP_TIMEOUT)
    assert os.stat(server.instance).st_mode & 0o777 == 0o700
    for name in sorted(os.listdir(server.instance)):
        assert os.stat(os.path.join(server.instance, name)).st_mode & 0o777 == 0o600, name
