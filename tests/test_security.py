"""Secure by default: the local token, accounts, tokens, ownership, CSRF, sign-in limits, headers."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys

import pytest

from jarvis.config import Config
from tests.conftest import LOCAL_TOKEN, Api, clean_env, config_refuses, wait_for
from tests.fake_ollama import Script

REMOTE = {"REMOTE_ADDR": "192.0.2.7"}
PASSWORD = "correct horse battery"


@pytest.fixture
def accounts(app):
    return app.extensions["jarvis"].accounts


@pytest.fixture
def bare(app):
    """A client with no credential at all."""
    client = app.test_client()
    client.environ_base.pop("HTTP_AUTHORIZATION")
    return client


def _login(client, name="ann", password=PASSWORD):
    r = client.post("/login", json={"name": name, "password": password})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["csrf_token"]


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# no request without a credential


def test_no_request_is_served_without_the_local_token(bare):
    for method, path in (("get", "/api/sessions"), ("post", "/api/sessions"), ("get", "/metrics")):
        r = getattr(bare, method)(path)
        assert r.status_code == 401, path
        assert "local token" in r.get_json()["error"]["message"]
    page = bare.get("/")
    assert page.status_code == 302 and page.headers["Location"].endswith("/login")
    assert bare.get("/api/sessions", headers={"Authorization": "Bearer guessed"}).status_code == 401


def test_healthz_is_open_but_says_only_whether_jarvis_and_its_model_are_up(bare, client):
    assert bare.get("/healthz").get_json() == {"status": "ok", "upstream_ok": True}
    wrong = bare.get("/healthz", headers={"Authorization": "Bearer stale"})
    assert wrong.get_json() == {"status": "ok", "upstream_ok": True}
    assert client.get("/healthz").get_json()["model"] == "tiny"  # more for a caller with a credential


def test_the_printed_address_trades_the_token_for_a_cookie_and_drops_it(bare):
    r = bare.get(f"/?token={LOCAL_TOKEN}&x=1")
    assert r.status_code == 302 and r.headers["Location"] == "/?x=1"  # no token in the address bar
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Expires=" in cookie
    assert LOCAL_TOKEN not in cookie
    assert bare.get("/api/sessions").status_code == 200
    assert bare.get("/").status_code == 200


def test_a_wrong_token_in_the_address_signs_nobody_in(bare):
    r = bare.get("/?token=not-the-token")
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    assert bare.get("/api/sessions").status_code == 401


def test_the_local_token_is_generated_once_private_and_long(make_app, tmp_path):
    app = make_app(local_token="")
    path = os.path.join(app.instance_path, "local_token")
    token = open(path).read().strip()
    assert _mode(path) == 0o600 and len(token) >= 43  # 256 random bits in URL-safe base64
    again = make_app(local_token="")
    assert again.extensions["jarvis.local_token"] == token
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    assert client.get("/api/sessions").status_code == 200


def test_protected_mode_answers_only_loopback_clients(client):
    assert client.get("/api/sessions").status_code == 200
    remote = client.get("/api/sessions", environ_overrides=REMOTE)
    assert remote.status_code == 403
    assert remote.get_json()["error"]["code"] == "protected_mode"
    assert "jarvis user add" in remote.get_json()["error"]["message"]


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP", "Via"])
def test_protected_mode_treats_a_proxied_request_as_remote(client, header):
    assert client.get("/api/sessions", headers={header: "for=192.0.2.7"}).status_code == 403


def test_a_foreign_host_name_is_refused(client):
    # a DNS-rebinding page reaches 127.0.0.1 under its own name
    r = client.get("/api/sessions", headers={"Host": "evil.example:8000"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "host_not_allowed"


def test_insecure_no_auth_serves_without_a_credential_but_still_checks_the_host(make_app, caplog):
    caplog.set_level(logging.WARNING)
    app = make_app(insecure_no_auth=True)
    assert "INSECURE" in caplog.text
    bare = app.test_client()
    bare.environ_base.pop("HTTP_AUTHORIZATION")
    assert bare.get("/api/sessions", environ_overrides=REMOTE).status_code == 200
    rebound = bare.get("/api/sessions", headers={"Host": "attacker.example"})
    assert rebound.status_code == 403 and rebound.get_json()["error"]["code"] == "host_not_allowed"
    assert bare.post("/api/sessions", headers={"Host": "attacker.example"}).status_code == 403


def test_allowed_hosts_add_a_public_name(make_app):
    client = make_app(allowed_hosts="chat.example.org").test_client()
    client.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    client.application.extensions["jarvis"].accounts.add("ann", PASSWORD)
    assert client.get("/healthz", headers={"Host": "chat.example.org"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "other.example.org"}).status_code == 403


def test_cross_origin_writes_are_refused_even_on_loopback(bare):
    bare.get(f"/?token={LOCAL_TOKEN}")
    sid = bare.post("/api/sessions", headers={"Origin": "http://localhost"}).get_json()["id"]
    r = bare.post(
        f"/api/sessions/{sid}/messages", json={"content": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "cross_origin"
    assert bare.post("/api/sessions", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert bare.post("/api/sessions").status_code == 403  # no origin hints and no X-CSRF-Token


def test_the_origin_check_compares_the_scheme_too(bare):
    bare.get(f"/?token={LOCAL_TOKEN}")
    assert bare.post("/api/sessions", headers={"Origin": "http://localhost"}).status_code == 201
    r = bare.post("/api/sessions", headers={"Origin": "https://localhost"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "cross_origin"


def test_the_local_token_means_nothing_once_an_account_exists(bare, accounts):
    bare.get(f"/?token={LOCAL_TOKEN}")
    assert bare.get("/api/sessions").status_code == 200
    accounts.add("ann", PASSWORD)
    assert bare.get("/api/sessions").status_code == 401  # its cookie too
    assert bare.get("/api/sessions", headers={"Authorization": f"Bearer {LOCAL_TOKEN}"}).status_code == 401


# accounts, cookies and tokens


def test_once_an_account_exists_everything_but_health_needs_credentials(client, accounts):
    accounts.add("ann", PASSWORD)
    assert client.get("/api/sessions").status_code == 401
    assert client.post("/api/sessions").status_code == 401
    assert client.get("/metrics").status_code == 401
    page = client.get("/")
    assert page.status_code == 302 and page.headers["Location"].endswith("/login")
    health = client.get("/healthz")
    assert health.status_code == 200 and health.get_json() == {"status": "ok", "upstream_ok": True}
    assert client.get("/login").status_code == 200


def test_metrics_answer_an_accounts_bearer_token(client, accounts):
    accounts.add("ann", PASSWORD)
    auth = {"Authorization": "Bearer " + accounts.create_token("ann", "prometheus")}
    assert client.get("/metrics", headers=auth).status_code == 200


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


def test_cookie_is_httponly_samesite_lax_and_lasts_14_days(client, accounts):
    accounts.add("ann", PASSWORD)
    r = client.post("/login", json={"name": "ann", "password": PASSWORD})
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.application.permanent_session_lifetime.total_seconds() == 14 * 86400
    assert "Expires=" in cookie
    secure = client.post(
        "/login", json={"name": "ann", "password": PASSWORD}, base_url="https://localhost"
    ).headers["Set-Cookie"]
    assert "Secure" in secure


def test_cookie_lifetime_is_configurable(make_app):
    app = make_app(cookie_lifetime_s=3600)
    assert app.permanent_session_lifetime.total_seconds() == 3600


def _copied_cookie(app, password=PASSWORD) -> str:
    client = app.test_client()
    _login(client, password=password)
    return client.get_cookie("jarvis_session").value


def _with_cookie(app, value: str):
    client = app.test_client()
    client.environ_base.pop("HTTP_AUTHORIZATION")
    client.set_cookie("jarvis_session", value)
    return client


def test_sign_out_ends_a_copied_cookie(app, accounts):
    accounts.add("ann", PASSWORD)
    copied = _copied_cookie(app)
    browser = _with_cookie(app, copied)
    assert browser.get("/api/sessions").status_code == 200
    assert browser.post("/logout", headers={"Origin": "http://localhost"}).status_code in (200, 302)
    assert _with_cookie(app, copied).get("/api/sessions").status_code == 401


def test_a_new_password_or_removing_the_user_ends_every_cookie(app, accounts):
    accounts.add("ann", PASSWORD)
    copied = _copied_cookie(app)
    accounts.set_password("ann", "another password")
    assert _with_cookie(app, copied).get("/api/sessions").status_code == 401
    accounts.add("bob", PASSWORD)  # with no account left, the local token would sign in again
    copied = _copied_cookie(app, password="another password")
    accounts.remove("ann")
    assert _with_cookie(app, copied).get("/api/sessions").status_code == 401


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


def _two_users(app) -> tuple[dict, dict]:
    accounts = app.extensions["jarvis"].accounts
    accounts.add("ann", PASSWORD)
    accounts.add("bob", PASSWORD)
    ann = {"Authorization": "Bearer " + accounts.create_token("ann")}
    bob = {"Authorization": "Bearer " + accounts.create_token("bob")}
    return ann, bob


def test_stop_never_crosses_users(make_app, make_server, fake):
    fake.script(Script(load_delay_s=60))
    app = make_app()
    ann, bob = _two_users(app)
    api = Api(make_server(app).url, token=None)
    import requests

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


# per-user fairness and revocation of live answers


def test_one_user_cannot_fill_every_stream_slot(make_app, make_server, fake):
    fake.script(Script(load_delay_s=60))
    app = make_app(max_streams_per_user=1)
    ann, bob = _two_users(app)
    api = Api(make_server(app).url, token=None)
    import requests

    def start(headers):
        sid = requests.post(api.url + "/api/sessions", headers=headers, timeout=5).json()["id"]
        return sid, requests.post(
            f"{api.url}/api/sessions/{sid}/messages",
            json={"content": "x"},
            headers=headers,
            stream=True,
            timeout=5,
        )

    sid, first = start(ann)
    assert first.status_code == 200
    _, second = start(ann)
    assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0
    error = second.json()["error"]
    assert error["code"] == "too_many_streams" and "already has 1 answers streaming" in error["message"]
    _, bobs = start(bob)
    assert bobs.status_code == 200  # another account is not held up
    again = requests.post(  # a new prompt in the same session supersedes: no extra slot
        f"{api.url}/api/sessions/{sid}/messages", json={"content": "y"}, headers=ann, stream=True, timeout=5
    )
    assert again.status_code == 200
    assert app.extensions["jarvis"].registry.count_owned(1) == 1
    for r in (first, bobs, again):
        r.close()


def test_revoking_a_token_or_removing_a_user_stops_their_live_answers(make_app, make_server, fake):
    # without the revocation watch each answer would run until the model's 60 s load ends
    fake.script(Script(load_delay_s=60))
    app = make_app()
    ann, bob = _two_users(app)
    accounts = app.extensions["jarvis"].accounts
    api = Api(make_server(app).url, token=None)
    import requests

    from tests.conftest import SSE

    streams = []
    for headers in (ann, bob):
        sid = requests.post(api.url + "/api/sessions", headers=headers, timeout=5).json()["id"]
        r = requests.post(
            f"{api.url}/api/sessions/{sid}/messages",
            json={"content": "x"},
            headers=headers,
            stream=True,
            timeout=5,
        )
        streams.append(SSE(r))
    calls = fake.wait_for_calls(2)
    accounts.revoke(accounts.tokens()[0]["id"])
    assert streams[0].end() == {"status": "stopped", "reason": "revoked"}
    assert calls[0].wait_closed(1) and calls[1].closed_at is None
    accounts.remove("bob")
    assert streams[1].end() == {"status": "stopped", "reason": "revoked"}
    wait_for(lambda: app.extensions["jarvis"].registry.live() == [], what="streams released")


# sign-in limits


def test_wrong_passwords_from_one_address_never_refuse_another(client, accounts):
    accounts.add("ann", PASSWORD)
    attacker = {"REMOTE_ADDR": "192.0.2.66"}
    for _ in range(10):
        r = client.post("/login", json={"name": "ann", "password": "wrong-password"}, environ_base=attacker)
        assert r.status_code == 401
    r = client.post("/login", json={"name": "ann", "password": PASSWORD}, environ_base=attacker)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert client.post("/login", json={"name": "ann", "password": PASSWORD}).status_code == 200


def test_a_trusted_proxy_names_the_client_address(make_app):
    app = make_app(trusted_proxies="127.0.0.1")
    app.extensions["jarvis"].accounts.add("ann", PASSWORD)
    client = app.test_client()
    for _ in range(10):
        wrong = {"name": "ann", "password": "wrong-password"}
        assert client.post("/login", json=wrong, headers={"X-Forwarded-For": "192.0.2.66"}).status_code == 401
    right = {"name": "ann", "password": PASSWORD}
    assert client.post("/login", json=right, headers={"X-Forwarded-For": "192.0.2.66"}).status_code == 429
    assert client.post("/login", json=right, headers={"X-Forwarded-For": "192.0.2.1"}).status_code == 200
    # an address the proxy did not vouch for is not believed
    untrusted = app.test_client()
    untrusted.environ_base["REMOTE_ADDR"] = "192.0.2.66"
    r = untrusted.post("/login", json=right, headers={"X-Forwarded-For": "192.0.2.1"})
    assert r.status_code == 429


def test_parallel_wrong_passwords_get_no_more_checks_than_the_limit(make_app, make_server):
    # the limit is the subject, not the password checks' slots (test_input.py): under a heavy load
    # the 2 s a sign-in waits for a slot ran out and some answered 503 sign_in_busy instead
    app = make_app(login_wait_s=30.0)
    accounts = app.extensions["jarvis"].accounts
    accounts.add("ann", PASSWORD)
    checks = []
    real = accounts.authenticate

    def counted(name, password):
        checks.append(name)
        return real(name, password)

    accounts.authenticate = counted
    url = make_server(app, threads=16).url
    import concurrent.futures

    import requests

    def attempt(_):
        return requests.post(
            url + "/login", json={"name": "ann", "password": "wrong-password"}, timeout=(2, 30)
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(attempt, range(60)))
    assert codes.count(401) == len(checks) <= 10
    assert codes.count(429) == 60 - len(checks)


def test_rate_limited_form_sign_in_gets_the_page_back(client, accounts):
    accounts.add("ann", PASSWORD)
    for _ in range(10):
        client.post("/login", data={"name": "ann", "password": "wrong-password"})
    r = client.post("/login", data={"name": "ann", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert "Too many sign-in attempts" in r.get_data(as_text=True)


# bodies, names and errors


def test_an_app_wide_body_limit_refuses_a_huge_sign_in(make_app):
    app = make_app(max_prompt_chars=1000)
    app.extensions["jarvis"].accounts.add("ann", PASSWORD)
    r = app.test_client().post("/login", data={"name": "ann", "password": "x" * 2_000_000})
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "prompt_too_large"


def test_deeply_nested_json_answers_400_without_a_traceback(client, caplog):
    sid = client.post("/api/sessions").get_json()["id"]
    nested = "[" * 50_000 + "]" * 50_000
    body = '{"content": ' + nested + "}"
    r = client.post(f"/api/sessions/{sid}/messages", data=body, content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_request"
    client.application.extensions["jarvis"].accounts.add("ann", PASSWORD)
    r = client.post("/login", data='{"name": ' + nested + "}", content_type="application/json")
    assert r.status_code == 401
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


@pytest.mark.parametrize("model", ["tiny\r\nINFO forged", "tiny\x1b[2J", "", "x" * 201, "tiny latest"])
def test_a_model_name_outside_the_safe_characters_is_refused(client, model):
    sid = client.post("/api/sessions").get_json()["id"]
    r = client.post(f"/api/sessions/{sid}/messages", json={"content": "x", "model": model or 7})
    assert r.status_code == 400 and "model" in r.get_json()["error"]["message"]


def test_log_values_and_messages_are_escaped():
    from jarvis.log import TextFormatter

    record = logging.LogRecord("jarvis", logging.INFO, __file__, 1, "on /a\r\x1b[31m", None, None)
    record.fields = {"model": "tiny\rINFO forged\x1b[0m"}
    line = TextFormatter().format(record)
    assert "\r" not in line and "\x1b" not in line and "\n" not in line
    assert '"tiny\\rINFO forged\\u001b[0m"' in line


def test_not_found_echoes_a_bounded_id(client):
    r = client.get("/api/sessions/" + "A" * 5000)
    assert r.status_code == 404 and len(r.get_json()["error"]["message"]) < 80


def test_a_database_error_names_no_path(make_app, tmp_path, caplog):
    app = make_app()
    store = app.extensions["jarvis"].store
    hidden = str(tmp_path / "nowhere" / "secret-place.sqlite3")
    store.engine.path = hidden  # the folder does not exist: every open fails
    r = app.test_client().get("/api/sessions")
    assert r.status_code == 500 and r.get_json()["error"]["code"] == "store_error"
    assert "secret-place" not in r.get_data(as_text=True)
    assert "secret-place" in caplog.text  # the server log keeps the detail


def test_an_empty_secret_key_file_is_regenerated(make_app, tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "secret_key").write_text("")  # a crash during its first write
    app = make_app()
    app.extensions["jarvis"].accounts.add("ann", PASSWORD)
    _login(app.test_client())
    key = (instance / "secret_key").read_text()
    assert len(key) >= 32 and _mode(instance / "secret_key") == 0o600


def test_a_short_secret_key_is_refused_with_the_variable_named():
    config_refuses("JARVIS_SECRET_KEY", "short", "JARVIS_SECRET_KEY must be at least 32 characters")
    config_refuses("JARVIS_LOCAL_TOKEN", "short")
    config_refuses("JARVIS_TRUSTED_PROXIES", "not-an-address")


# private files


def test_the_instance_folder_and_its_files_are_private(make_app, tmp_path):
    app = make_app(database="", local_token="")
    client = app.test_client()
    client.post("/api/sessions", headers={"Authorization": "Bearer " + app.extensions["jarvis.local_token"]})
    folder = app.instance_path
    assert _mode(folder) == 0o700
    for name in ("jarvis.sqlite3", "jarvis.sqlite3-wal", "jarvis.sqlite3-shm", "secret_key", "local_token"):
        assert _mode(os.path.join(folder, name)) == 0o600, name


def test_files_made_by_an_older_version_are_made_private(make_app, tmp_path):
    folder = tmp_path / "instance"
    folder.mkdir(mode=0o755)
    db = folder / "jarvis.sqlite3"
    from jarvis.store import Store

    Store(str(db)).close()
    os.chmod(folder, 0o755)
    for name in (db, f"{db}-wal", f"{db}-shm"):
        if os.path.exists(name):
            os.chmod(name, 0o644)
    make_app(database="")
    assert _mode(folder) == 0o700 and _mode(db) == 0o600


def test_the_instance_folder_follows_systemd_and_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert Config().instance_path() == str(tmp_path / "state")
    assert Config(instance_dir=str(tmp_path / "x")).instance_path() == str(tmp_path / "x")
    assert Config(instance_dir=str(tmp_path / "x")).database_path() == str(tmp_path / "x" / "jarvis.sqlite3")


# unchanged guarantees


def test_secrets_are_stored_only_as_hashes(app, accounts):
    accounts.add("ann", PASSWORD)
    token = accounts.create_token("ann")
    path = app.extensions["jarvis"].store.engine.path
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
    assert LOCAL_TOKEN not in logged


def test_an_unexpected_error_answers_json_without_a_traceback(make_app, monkeypatch):
    app = make_app()
    store = app.extensions["jarvis"].store
    monkeypatch.setattr(store, "list_sessions", lambda owner=None: 1 / 0)
    r = app.test_client().get("/api/sessions")
    assert r.status_code == 500 and r.get_json()["error"]["code"] == "internal_error"
    assert "Traceback" not in r.get_data(as_text=True) and "ZeroDivision" not in r.get_data(as_text=True)


def test_serve_on_all_interfaces_refuses_without_an_account(tmp_path):
    env = clean_env(JARVIS_INSTANCE_DIR=str(tmp_path / "i"), JARVIS_BACKEND="ollama")
    out = subprocess.run(
        [sys.executable, "-m", "jarvis.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "jarvis user add" in out.stderr and "--insecure-no-auth" in out.stderr


@pytest.mark.slow  # runs the jarvis command in processes of its own
def test_user_and_token_commands(tmp_path, fake):
    env = clean_env(JARVIS_INSTANCE_DIR=str(tmp_path / "i"))

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
    assert _mode(tmp_path / "i") == 0o700 and _mode(tmp_path / "i" / "jarvis.sqlite3") == 0o600
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
