"""Under a sub-path: the paths Jarvis emits carry a trusted proxy's X-Forwarded-Prefix, and only its."""

from __future__ import annotations

import pytest

NAME, PASSWORD = "ann", "correct horse battery"
PROXY = {"REMOTE_ADDR": "127.0.0.1"}  # the proxy named in JARVIS_TRUSTED_PROXIES
FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Prefix": "/jarvis"}


@pytest.fixture
def client(make_app):
    app = make_app(trusted_proxies="127.0.0.1")
    app.extensions["jarvis"].accounts.add(NAME, PASSWORD)
    return app.test_client()


def test_a_trusted_prefix_is_in_the_redirects_the_links_and_the_cookie_path(client):
    r = client.get("/", headers=FORWARDED, environ_base=PROXY)
    assert r.status_code == 302 and r.headers["Location"] == "/jarvis/login"
    page = client.get("/login", headers=FORWARDED, environ_base=PROXY).text
    assert 'href="/jarvis/static/login.css"' in page and 'action="/jarvis/login"' in page
    r = client.post(
        "/login", data={"name": NAME, "password": PASSWORD}, headers=FORWARDED, environ_base=PROXY
    )
    assert r.status_code == 302 and r.headers["Location"] == "/jarvis/"
    assert "Path=/jarvis;" in r.headers["Set-Cookie"]
    token = client.application.extensions["jarvis"].accounts.create_token(NAME)
    # the cookie's path is /jarvis, which this client never asks for: the page with a bearer token
    page = client.get("/", headers={**FORWARDED, "Authorization": f"Bearer {token}"}, environ_base=PROXY).text
    assert 'src="/jarvis/static/app.js"' in page


def test_without_the_prefix_the_paths_are_the_root_ones(client):
    assert client.get("/", headers={"X-Forwarded-For": "203.0.113.7"}).headers["Location"] == "/login"
    r = client.post("/login", data={"name": NAME, "password": PASSWORD})
    assert r.headers["Location"] == "/" and "Path=/;" in r.headers["Set-Cookie"]


@pytest.mark.parametrize(
    "remote, prefix",
    [
        ("192.0.2.9", "/jarvis"),  # a client, not the proxy: anyone could send the header
        ("127.0.0.1", "//evil.example"),  # would make every link and redirect point at another host
        ("127.0.0.1", "/jarvis/<script>"),
        ("127.0.0.1", "https://evil.example/x"),
    ],
)
def test_a_prefix_from_an_untrusted_address_or_not_a_plain_path_is_ignored(client, remote, prefix):
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Prefix": prefix}
    r = client.get("/", headers=headers, environ_base={"REMOTE_ADDR": remote})
    assert r.status_code == 302 and r.headers["Location"] == "/login"
