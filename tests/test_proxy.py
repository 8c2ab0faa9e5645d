"""The nginx directives of docs/deployment.md, and nginx's defaults, run for real.

SSE passes unbuffered, a proxied request is not local, a gone client is seen, and
behind a proxy that hides who the client is nothing is served without the local token.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from tests.conftest import ROOT, Api, free_port
from tests.fake_ollama import Script

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def doc_location(heading: str, upstream: str = "http://127.0.0.1:{port}") -> str:
    """The location block of the first nginx example under ``heading`` in docs/deployment.md,
    verbatim but passing to ``upstream``, with its braces doubled for the nginx fixture to format."""
    text = open(os.path.join(ROOT, "docs", "deployment.md")).read()
    example = re.search(r"```nginx\n(.*?)```", text[text.index(heading) :], re.S).group(1)
    block = re.search(r"^([ \t]*)location\b.*?^\1\}", example, re.M | re.S).group(0)
    assert "http://127.0.0.1:8000" in block
    return block.replace("{", "{{").replace("}", "}}").replace("http://127.0.0.1:8000", upstream) + "\n"


# the location block of docs/deployment.md, verbatim but for the port
LOCATION = doc_location("## Behind nginx or Caddy")

# nginx's defaults: Host becomes the upstream address and no forwarding header is added,
# so every client through it looks like a loopback client of Jarvis
DEFAULT_LOCATION = """
    location / {{
        proxy_pass http://127.0.0.1:{port};
    }}
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("nginx") and not shutil.which(NGINX), reason="nginx not installed"),
]


@pytest.fixture
def nginx(tmp_path):
    def start(upstream_port: int, location: str = LOCATION) -> str:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            f"daemon off; master_process off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
            f"events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {tmp_path};\n"
            f" proxy_temp_path {tmp_path};\n server {{\n  listen 127.0.0.1:{port};\n"
            + location.format(port=upstream_port)
            + " }\n}\n"
        )
        proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"nginx did not start: {proc.stderr.read()}") from None
                time.sleep(0.02)  # polling for the listener under a deadline

    procs: list[subprocess.Popen] = []
    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(5)
        proc.stderr.close()


def test_tokens_pass_through_nginx_as_they_are_made(make_app, make_server, fake, nginx):
    fake.script(Script(tokens=6, interval_s=0.2))
    app = make_app()
    app.extensions["jarvis"].accounts.add("ann", "correct horse battery")  # behind a proxy: accounts
    token = app.extensions["jarvis"].accounts.create_token("ann")
    backend = make_server(app)
    url = nginx(int(backend.url.rsplit(":", 1)[1]))
    import requests

    auth = {"Authorization": f"Bearer {token}"}
    sid = requests.post(url + "/api/sessions", headers=auth, timeout=5).json()["id"]
    r = requests.post(
        f"{url}/api/sessions/{sid}/messages", json={"content": "x"}, headers=auth, stream=True, timeout=(2, 5)
    )
    arrivals = []
    for line in r.iter_lines(chunk_size=None):
        if line.startswith(b"event: token"):
            arrivals.append(time.monotonic())
    assert len(arrivals) == 6
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) > 0.1  # each token arrived on its own, not in one buffered burst


def test_protected_mode_refuses_requests_through_the_proxy(make_app, make_server, nginx):
    backend = make_server(make_app())
    url = nginx(int(backend.url.rsplit(":", 1)[1]))
    import requests

    r = requests.get(url + "/api/sessions", timeout=5)
    assert r.status_code == 403 and r.json()["error"]["code"] == "protected_mode"


def test_a_client_gone_behind_nginx_cancels_the_upstream(make_app, make_server, fake, nginx):
    fake.script(Script(load_delay_s=60))
    app = make_app(insecure_no_auth=True)
    url = nginx(int(make_server(app).url.rsplit(":", 1)[1]))
    api = Api(url)
    sse = api.send(api.session(), "x")
    sse.until("start")
    call = fake.wait_for_calls(1)[0]
    sse.close()
    assert call.wait_closed(3) and call.closed_by == "client"


def test_nothing_is_served_through_a_default_proxy_without_the_local_token(hosted, nginx):
    # loopback trust alone let any client of such a proxy create sessions and read them
    server = hosted()
    url = nginx(int(server.url.rsplit(":", 1)[1]), DEFAULT_LOCATION)
    import requests

    for method, path in (
        ("post", "/api/sessions"),
        ("get", "/api/sessions"),
        ("get", "/metrics"),
        ("post", "/api/sessions/x/messages"),
    ):
        r = getattr(requests, method)(url + path, json={"content": "x"}, timeout=5)
        assert r.status_code == 401, (path, r.text)
    page = requests.get(url + "/", allow_redirects=False, timeout=5)
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    assert (
        requests.get(url + "/?token=guess", allow_redirects=False, timeout=5)
        .headers["Location"]
        .endswith("/login")
    )
    assert requests.get(url + "/healthz", timeout=5).json() == {"status": "ok", "upstream_ok": True}
