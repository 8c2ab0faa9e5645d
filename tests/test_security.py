"""Secure by default: protected mode, accounts, tokens, ownership, CSRF, rate limits, headers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from tests.conftest import Api, clean_env
from tests.fake_ollama import Script

REMOTE = {"REMOTE_ADDR": "192.0.2.7"}
PASSWORD = "correct horse battery"


@pytest.fixture
def accounts(app):
    return app.extensions["jarvis"].accounts


def _login(client, name="ann", password=PASSWORD):
    r = client.post("/login", json={"name": name, "password": password})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["csrf_token"]


def test_protected_mode_answers_only_loopback_clients(client):
    assert client.get("/api/sessions").status_code == 200
    remote = client.get("/api/sessions", environ_overrides=REMOTE)
    assert remote.status_code == 403
    assert remote.get_json()["error"]["code"] == "protected_mode"
    assert "jarvis user add" in remote.get_json()["error"]["message"]


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP", "Via"])
def test_protected_mode_treats_a_proxied_request_as_remote(client, header):
    assert client.get("/api/sessions", headers={header: "for=192.0.2.7"}).status_code == 403


def test_protected_mode_refuses_a_foreign_host_name(client):
    # a DNS-rebinding page reaches 127.0.0.1 under its own name
    assert client.get("/api/sessions", headers={"Host": "evil.example:8000"}).status_code == 403


def test_cross_origin_writes_are_refused_even_on_loopback(client):
    sid = client.post("/api/sessions").get_json()["id"]
    r = client.post(
        f"/api/sessions/{sid}/messages", json={"content": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "cross_origin"
    r = client.post("/api/sessions", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403


def test_once_an_account_exists_everything_but_health_needs_credentials(client, accounts):
    accounts.add("ann", PASSWORD)
    assert client.get("/api/sessions").status_code == 401
    assert client.post("/api/sessions").status_code == 401
    assert client.get("/metrics").status_code == 401
    page = client.get("/")
    assert page.status_code == 302 and page.headers["Location"].endswith("/login")
    health = client.get("/healthz")
    assert health.status_code == 200 and "sessions" not in health.get_json()
    assert client.get("/login").status_code == 200


def test_first_account_adopts_the_sessions_made_before(client, accounts):
    sid = client.post("/api/sessions").get_json()["id"]
    accounts.add("ann", PASSWORD)
    _login(client)
    assert [s["id"] for s in client.get("/api/sessions").get_json()["sessions"]] == [sid]


def test_bearer_token_works_and_revoking_it_takes_effect_at_once(client, accounts):
    accounts.add("ann", PASSWORD)
    token = accounts.create_token("ann", "laptop")
    assert len(token) >= 40
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/sessions", headers=auth).status_code == 201
    accounts.revoke(accounts.tokens()[0]["id"])
    r = client.get("/api/sessions", headers=auth)
    assert r.status_code == 401
    assert client.get("/api/sessions", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_cookie_writes_need_our_origin(client, accounts):
    accounts.add("ann", PASSWORD)
    csrf = _login(client)
    same = {"Origin": "http://localhost"}
    assert client.post("/api/sessions", headers=same).status_code == 201
    assert client.post("/api/sessions", headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/sessions", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 201
    assert client.post("/api/sessions").status_code == 403  # no origin hints: the token header is needed
    assert client.post("/api/sessions", headers={"X-CSRF-Token": csrf}).status_code == 201


def test_cookie_is_httponly_and_samesite_lax(client, accounts):
    accounts.add("ann", PASSWORD)
    r = client.post("/login", json={"name": "ann", "password": PASSWORD})
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    secure = client.post(
        "/login", json={"name": "ann", "password": PASSWORD}, base_url="https://localhost"
    ).headers["Set-Cookie"]
    assert "Secure" in secure


def test_another_users_session_is_not_found_on_every_route(client, accounts):
    accounts.add("ann", PASSWORD)
    accounts.add("bob", PASSWORD)
    ann = {"Authorization": "Bearer " + accounts.create_token("ann")}
    bob = {"Authorization": "Bearer " + accounts.create_token("bob")}
    sid = client.post("/api/sessions", headers=ann).get_json()["id"]
    routes = [
        ("get", f"/api/sessions/{sid}", {}),
        ("post", f"/api/sessions/{sid}/messages", {"json": {"content": "x"}}),
        ("post", f"/api/sessions/{sid}/stop", {}),
        ("delete", f"/api/sessions/{sid}", {}),
    ]
    for method, path, kw in routes:
        r = getattr(client, method)(path, headers=bob, **kw)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found", path
    assert client.get("/api/sessions", headers=bob).get_json()["sessions"] == []
    assert client.get(f"/api/sessions/{sid}", headers=ann).status_code == 200


def test_stop_never_crosses_users(make_app, make_server, fake):
    fake.script(Script(load_delay_s=60))
    app = make_app()
    accounts = app.extensions["jarvis"].accounts
    accounts.add("ann", PASSWORD)
    accounts.add("bob", PASSWORD)
    api = Api(make_server(app).url)
    import requests

    ann = {"Authorization": "Bearer " + accounts.create_token("ann")}
    bob = {"Authorization": "Bearer " + accounts.create_token("bob")}
    sid = requests.post(api.url + "/api/sessions", headers=ann, timeout=5).json()["id"]
    stream = requests.post(
        f"{api.url}/api/sessions/{sid}/messages", json={"content": "x"}, headers=ann, stream=True, timeout=5
    )
    assert stream.status_code == 200
    fake.wait_for_calls(1)
    assert requests.post(f"{api.url}/api/sessions/{sid}/stop", headers=bob, timeout=5).status_code == 404
    assert fake.chat_calls()[0].closed_at is None
    assert requests.post(f"{api.url}/api/sessions/{sid}/stop", headers=ann, timeout=5).json() == {
        "stopped": True
    }
    assert fake.chat_calls()[0].wait_closed(2)
    stream.close()


def test_failed_logins_are_rate_limited(client, accounts):
    accounts.add("ann", PASSWORD)
    for _ in range(10):
        assert client.post("/login", json={"name": "ann", "password": "wrong-password"}).status_code == 401
    r = client.post("/login", json={"name": "ann", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


def test_secrets_are_stored_only_as_hashes(app, accounts):
    accounts.add("ann", PASSWORD)
    token = accounts.create_token("ann")
    path = app.extensions["jarvis"].store.path
    data = b"".join(open(p, "rb").read() for p in (path, path + "-wal") if os.path.exists(p))
    assert PASSWORD.encode() not in data and token.encode() not in data


def test_security_headers_on_every_response(client):
    for path in ("/", "/api/sessions", "/healthz", "/static/app.css"):
        headers = client.get(path).headers
        assert "default-src 'self'" in headers["Content-Security-Policy"], path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/api/sessions").headers["Referrer-Policy"] == "no-referrer"


def test_logs_and_errors_carry_no_secrets_or_prompts(make_app, caplog):
    caplog.set_level(logging.DEBUG)
    app = make_app()
    accounts = app.extensions["jarvis"].accounts
    accounts.add("ann", PASSWORD)
    token = accounts.create_token("ann")
    client = app.test_client()
    client.post("/login", json={"name": "ann", "password": "wrong " + PASSWORD})
    auth = {"Authorization": f"Bearer {token}"}
    sid = client.post("/api/sessions", headers=auth).get_json()["id"]
    r = client.post(f"/api/sessions/{sid}/messages", json={"content": "my secret prompt"}, headers=auth)
    r.close()
    logged = caplog.text
    assert PASSWORD not in logged and token not in logged and "my secret prompt" not in logged


def test_an_unexpected_error_answers_json_without_a_traceback(make_app, monkeypatch):
    app = make_app()
    store = app.extensions["jarvis"].store
    monkeypatch.setattr(store, "list_sessions", lambda owner=None: 1 / 0)
    r = app.test_client().get("/api/sessions")
    assert r.status_code == 500 and r.get_json()["error"]["code"] == "internal_error"
    assert "Traceback" not in r.get_data(as_text=True) and "ZeroDivision" not in r.get_data(as_text=True)


def test_serve_on_all_interfaces_refuses_without_an_account(tmp_path):
    env = clean_env(JARVIS_DATABASE=str(tmp_path / "s.sqlite3"), JARVIS_BACKEND="ollama")
    out = subprocess.run(
        [sys.executable, "-m", "jarvis.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "jarvis user add" in out.stderr and "--insecure-no-auth" in out.stderr


def test_user_and_token_commands(tmp_path, fake):
    env = clean_env(JARVIS_DATABASE=str(tmp_path / "u.sqlite3"))

    def jarvis(*args, stdin=""):
        return subprocess.run(
            [sys.executable, "-m", "jarvis.cli", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert jarvis("user", "add", "ann", stdin=PASSWORD + "\n").returncode == 0
    assert jarvis("user", "add", "ann", stdin=PASSWORD + "\n").returncode == 1
    assert jarvis("user", "add", "bob", stdin="short\n").returncode == 1
    assert jarvis("user", "list").stdout.startswith("ann\t")
    created = jarvis("token", "create", "--user", "ann", "--name", "ci")
    assert created.returncode == 0 and created.stdout.strip().startswith("jv_")
    assert "\tann\tci" in jarvis("token", "list").stdout
    assert jarvis("token", "revoke", "1").returncode == 0
    assert jarvis("token", "list").stdout == ""
    assert jarvis("user", "passwd", "ann", stdin="another password\n").returncode == 0
    assert jarvis("user", "remove", "ann").returncode == 0
    assert jarvis("user", "list").stdout == ""


def test_rate_limited_form_sign_in_gets_the_page_back(client, accounts):
    accounts.add("ann", PASSWORD)
    for _ in range(10):
        client.post("/login", data={"name": "ann", "password": "wrong-password"})
    r = client.post("/login", data={"name": "ann", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in r.get_data(as_text=True)
