"""Big and hostile input over real HTTP, under ``jarvis serve`` and plain ``python -m waitress … wsgi:app``,
and where ``jarvis chat`` sends its token.

What each guards: an import the docs promise (16 MiB) goes through both hosts, a refused one
answers Jarvis's JSON, an import built to balloon when parsed leaves the process small, and the
local token never leaves the machine.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import ipaddress
import json
import socket
import subprocess
import threading

import pytest
import requests

from jarvis import sse
from tests.conftest import HTTP_TIMEOUT, LOCAL_TOKEN, ROOT, clean_env, jarvis_command
from tests.test_security_server import _rss_kb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # server processes of their own

MIB = 1024 * 1024
IMPORT_TIMEOUT = (2, 30)  # a 16 MiB body is parsed and stored in one request


def export_of(size: int, messages: int = 10_000) -> bytes:
    """A valid export of about ``size`` bytes: ``messages`` exchanges' worth of text."""
    each = max(1, (size - 200) // messages - 120)
    body = {
        "format": "jarvis.chat",
        "version": 1,
        "title": "big",
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": "w" * each, "status": "completed"}
            for i in range(messages)
        ],
    }
    return json.dumps(body).encode()


def balloon(size: int, item: bytes = b"[]") -> bytes:
    """An import that names its format and then holds ``size`` bytes of ``item``: ``[[],[],…]``."""
    head, tail = b'{"format": "jarvis.chat", "messages": [], "x": [', item + b"]}"
    count = (size - len(head) - len(tail)) // (len(item) + 1)
    return head + (item + b",") * count + tail


def post_import(server, body: bytes) -> requests.Response:
    return requests.post(
        server.url + "/api/sessions/import",
        data=body,
        headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
        timeout=IMPORT_TIMEOUT,
    )


def grown_mb(server, run) -> float:
    """How far the server's resident peak rose above its resident size while ``run()`` ran."""
    pid = server.proc.pid
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # reset the peak: growth from here on is what ``run`` costs
    before = _rss_kb(pid, "VmRSS")
    run()
    return (_rss_kb(pid, "VmHWM") - before) / 1024


def test_an_export_the_docs_allow_imports_under_both_hosts(hosted):
    # before: jarvis serve's waitress refused a 398 KB export with its own plain-text 413
    server = hosted()
    small = post_import(server, export_of(400 * 1000, messages=100))
    assert small.status_code == 201, small.text[:200]
    big = export_of(16 * MIB - 64 * 1024)
    r = post_import(server, big)
    assert r.status_code == 201, r.text[:200]
    listed = requests.get(
        f"{server.url}/api/sessions/{r.json()['id']}", headers={"Authorization": f"Bearer {server.token}"},
        timeout=HTTP_TIMEOUT,
    )  # fmt: skip
    assert len(listed.json()["messages"]) == 10_000


def test_an_import_over_the_limit_answers_jarvis_json_413(hosted):
    server = hosted()
    r = post_import(server, b"{" + b" " * (16 * MIB + 1024) + b"}")
    assert r.status_code == 413
    assert r.headers["Content-Type"] == "application/json", r.text[:200]
    assert r.json()["error"]["code"] == "prompt_too_large"


@pytest.mark.parametrize("item", [b"[]", b'""'], ids=["lists", "strings"])
def test_an_import_of_millions_of_empty_values_keeps_the_process_small(hosted, item):
    # before: one such import of lists grew the process by about 440 MB, four at once by about 2 GB
    server = hosted()
    assert post_import(server, export_of(10_000, messages=2)).status_code == 201  # warm up
    body = balloon(16 * MIB - 64 * 1024, item)
    statuses: list[int] = []

    def one():
        r = post_import(server, body)
        assert r.headers["Content-Type"] == "application/json", r.text[:200]
        statuses.append(r.status_code)

    grown = grown_mb(server, one)
    assert grown < 64, f"one import grew the process by {grown:.0f} MB"
    assert statuses == [400], statuses

    def four():
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for _ in pool.map(lambda _: one(), range(4)):
                pass

    statuses.clear()
    grown = grown_mb(server, four)
    assert grown < 128, f"four imports at once grew the process by {grown:.0f} MB"
    assert set(statuses) <= {400, 429, 503} and 400 in statuses, statuses


class Recorder(http.server.BaseHTTPRequestHandler):
    """Any host a ``jarvis chat`` may be pointed at: it answers a prompt and notes who said what."""

    seen: list[str | None]

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.seen.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/api/sessions":
            body, kind, status = b'{"id": "s1"}', "application/json", 201
        else:
            body = sse.event("token", {"text": "hi"}) + sse.event("end", {"status": "completed"})
            kind, status = "text/event-stream", 200
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _this_machine_not_loopback() -> str | None:
    """An address of this machine that is not a loopback one, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_jarvis_chat_sends_the_local_token_only_to_loopback_addresses():
    # before: `jarvis chat --url http://any-host` sent this machine's local token to any-host
    address = _this_machine_not_loopback()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    seen: list[str | None] = []
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), type("R", (Recorder,), {"seen": seen}))
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="recorder")
    loop.start()
    port = server.server_address[1]
    try:

        def chat(url: str, *extra: str, **env) -> list[str | None]:
            seen.clear()
            out = subprocess.run(
                jarvis_command("chat", "--url", url, *extra, "hello"),
                env=clean_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert out.returncode == 0 and out.stdout == "hi\n", out.stderr
            return seen

        local = f"Bearer {LOCAL_TOKEN}"
        assert chat(f"http://{address}:{port}") == [None, None]
        assert chat(f"http://127.0.0.1:{port}") == [local, local]
        assert chat(f"http://localhost:{port}") == [local, local]
        assert chat(f"http://{address}:{port}", "--token", "jv_given") == ["Bearer jv_given"] * 2
        assert chat(f"http://{address}:{port}", JARVIS_TOKEN="jv_env") == ["Bearer jv_env"] * 2
    finally:
        server.shutdown()
        server.server_close()
        loop.join(5)


def test_jarvis_chat_help_says_where_each_token_goes():
    out = subprocess.run(
        jarvis_command("chat", "--help"),
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "--token" in out.stdout and "loopback" in out.stdout
