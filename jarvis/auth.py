"""Who may use Jarvis.

Until an account exists Jarvis is in protected mode: it serves only clients on
the loopback address that name a loopback host (a forwarded request counts as
remote; checking the Host header defeats DNS rebinding). Once an account
exists every route but ``/healthz`` and the login needs a signed-in cookie or a
bearer token. A state-changing request from a browser must come from our own
origin; bearer requests are exempt, since no browser adds them by itself.
None of this does I/O beyond one indexed SQLite read, so a stream starts as
fast as before.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from urllib.parse import urlsplit

from flask import Flask, current_app, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from flask_limiter.util import get_remote_address

from . import log
from .errors import Forbidden, Unauthorized

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# any of these means a proxy forwarded the request (plain waitress strips the X-Forwarded ones)
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP", "Via")
OPEN_ENDPOINTS = {"api.healthz", "static", "login", "logout"}
LOGIN_LIMIT = "10 per minute"
ADVICE = "create an account with `jarvis user add NAME` to use Jarvis from another machine"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class _SessionInterface(SecureCookieSessionInterface):
    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)


def init_app(app: Flask) -> None:
    """Install the checks, the login routes, the rate limit and the security headers."""
    cfg = app.extensions["jarvis"].config
    app.secret_key = cfg.secret_key or _instance_secret(app.instance_path)
    app.session_interface = _SessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="jarvis_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=cfg.cookie_secure,
    )
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://", headers_enabled=True)
    failed = lambda response: response.status_code == 401  # noqa: E731  only failures count
    view = limiter.limit(LOGIN_LIMIT, key_func=_client_key, deduct_when=failed, methods=["POST"])(login)
    view = limiter.limit(LOGIN_LIMIT, key_func=_account_key, deduct_when=failed, methods=["POST"])(view)
    app.register_error_handler(RateLimitExceeded, _login_limited)
    app.add_url_rule("/login", "login", view, methods=["GET", "POST"])
    app.add_url_rule("/logout", "logout", logout, methods=["POST"])
    app.before_request(authenticate)
    app.after_request(_security_headers)


def authenticate():
    """Run before every request: protected mode, or who the caller is."""
    g.user = None
    j = current_app.extensions["jarvis"]
    if request.endpoint == "static":
        return None
    if not j.accounts.exist():
        if not j.config.insecure_no_auth and not _is_local():
            raise Forbidden(
                f"Jarvis is in protected mode and answers only on this machine: {ADVICE}.",
                code="protected_mode",
            )
        _require_same_origin(cookie=False)
        return None
    token = _bearer()
    if token is not None:
        g.user = j.accounts.user_for_token(token)
        if g.user is None:
            raise Unauthorized("the bearer token is not valid (revoked or mistyped)")
        return None
    uid = session.get("uid")
    g.user = j.accounts.user(uid) if uid is not None else None
    if request.endpoint in OPEN_ENDPOINTS:
        if request.endpoint == "login":
            _require_same_origin(cookie=False)
        return None
    if g.user is None:
        if request.path.startswith(("/api/", "/v1/")) or request.endpoint == "api.metrics":
            raise Unauthorized("sign in, or send Authorization: Bearer <token>")
        return redirect(url_for("login"))
    _require_same_origin(cookie=True)
    return None


def owner() -> int | None:
    """The session owner for this request: the user's id, or None with no accounts."""
    return g.user.id if g.get("user") is not None else None


def login():
    j = current_app.extensions["jarvis"]
    if request.method == "GET":
        return render_template("login.html", error=None, accounts=j.accounts.exist())
    data = (request.get_json(silent=True) or {}) if request.is_json else request.form
    name, password = str(data.get("name", "")), str(data.get("password", ""))
    user = j.accounts.authenticate(name, password)
    if user is None:
        log.event("login_failed", address=request.remote_addr)
        if request.is_json:
            raise Unauthorized("wrong name or password")
        return render_template("login.html", error="Wrong name or password.", accounts=True), 401
    session.clear()
    session["uid"] = user.id
    session["csrf"] = secrets.token_urlsafe(24)
    log.event("login", user=user.name)
    if request.is_json:
        return {"user": user.name, "csrf_token": session["csrf"]}
    return redirect(url_for("web.index"))


def _login_limited(e: RateLimitExceeded):
    # a person at the form gets the page back; scripts get the JSON error
    if request.endpoint == "login" and not request.is_json:
        message = "Too many failed sign-ins. Wait a minute, then try again."
        return render_template("login.html", error=message, accounts=True), 429
    return {"error": {"code": "too_many_requests", "message": e.description}}, 429


def logout():
    _require_same_origin(cookie=True)
    session.clear()
    if request.is_json or request.accept_mimetypes.best == "application/json":
        return {"signed_out": True}
    return redirect(url_for("login"))


def _is_local() -> bool:
    if any(request.headers.get(h) for h in PROXY_HEADERS):
        return False  # whoever the proxy serves is not this machine
    try:
        if not ipaddress.ip_address(request.remote_addr or "").is_loopback:
            return False
    except ValueError:
        return False
    host = urlsplit("//" + request.host).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name pointing here: a rebinding attack looks just like this


def _require_same_origin(cookie: bool) -> None:
    if request.method not in UNSAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        if urlsplit(origin).netloc != request.host:
            raise Forbidden("cross-origin requests are refused", code="cross_origin")
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise Forbidden("cross-origin requests are refused", code="cross_origin")
        return
    if origin == "null" or (
        cookie and not hmac.compare_digest(request.headers.get("X-CSRF-Token", ""), session.get("csrf", ""))
    ):
        raise Forbidden("send the X-CSRF-Token header given at sign-in", code="cross_origin")


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _client_key() -> str:
    return "addr:" + (request.remote_addr or "?")


def _account_key() -> str:
    data = (request.get_json(silent=True) or {}) if request.is_json else request.form
    return "user:" + str(data.get("name", ""))[:64]


def _security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _instance_secret(instance_path: str) -> str:
    path = os.path.join(instance_path, "secret_key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as f:
            return f.read().strip()
    with os.fdopen(fd, "w") as f:
        key = secrets.token_hex(32)
        f.write(key)
    return key
