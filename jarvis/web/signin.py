"""Signing in and out: the /login and /logout routes, their rate limits (per address and name,
and per address whatever the name) and the slots for password hashing."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping

from flask import Flask, current_app, g, redirect, render_template, request, session, url_for
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from .. import log
from ..config import Config
from ..errors import BadRequest, Busy, Unauthorized
from .bodies import json_object
from .local import LOCAL_ADVICE, epoch
from .origin import client_address, require_same_origin

# every attempt counts, before the password is checked, per client address and account name, and
# per client address whatever the name (JARVIS_LOGIN_ADDRESS_LIMIT): rotating names buys no hashes
LOGIN_LIMIT = "10 per minute"


def init_app(app: Flask) -> None:
    """Install the sign-in routes with their rate limits, and the slots for password checks."""
    cfg = app.extensions["jarvis"].config
    limiter = Limiter(client_address, app=app, headers_enabled=True, **_limit_storage(cfg))
    view = limiter.limit(LOGIN_LIMIT, key_func=_attempt_key, methods=["POST"])(login)
    per_address = f"{cfg.login_address_limit} per minute"
    view = limiter.limit(per_address, key_func=client_address, methods=["POST"], scope="login-address")(view)
    # the password checks running at once: each takes a core and about 32 MB (scrypt)
    app.extensions["jarvis.hashing"] = threading.BoundedSemaphore(cfg.login_hashes)
    app.register_error_handler(RateLimitExceeded, _login_limited)
    app.add_url_rule("/login", "login", view, methods=["GET", "POST"])
    app.add_url_rule("/logout", "logout", logout, methods=["POST"])


def login():
    j = current_app.extensions["jarvis"]
    accounts = j.accounts.exist()
    if request.method == "GET":
        return render_template("login.html", error=None, accounts=accounts)
    if not accounts:
        raise BadRequest(f"Jarvis has no account yet: {LOCAL_ADVICE}")
    data = _body()
    name, password = str(data.get("name", "")), str(data.get("password", ""))
    hashing = current_app.extensions["jarvis.hashing"]
    if not hashing.acquire(timeout=j.config.login_wait_s):
        log.event("login_busy", logging.WARNING, address=client_address())
        message = "too many sign-ins at once; try again in a moment"
        if request.is_json:
            raise Busy(message, code="sign_in_busy")
        page = render_template("login.html", error=message[0].upper() + message[1:] + ".", accounts=True)
        return page, 503, {"Retry-After": "1"}
    try:
        user = j.accounts.authenticate(name, password)
    finally:
        hashing.release()
    if user is None:
        log.event("login_failed", address=client_address())
        if request.is_json:
            raise Unauthorized("wrong name or password")
        return render_template("login.html", error="Wrong name or password.", accounts=True), 401
    session.clear()
    session["uid"] = user.id
    session["gen"] = user.generation
    session["csrf"] = secrets.token_urlsafe(24)
    session.permanent = True  # the cookie lasts JARVIS_COOKIE_LIFETIME, and the signature says so too
    log.event("login", user=user.name)
    if request.is_json:
        return {"user": user.name, "csrf_token": session["csrf"]}
    return redirect(url_for("web.index"))


def _login_limited(e: RateLimitExceeded):
    # a person at the form gets the page back; scripts get the JSON error
    if request.endpoint == "login" and not request.is_json:
        message = "Too many sign-in attempts. Wait a minute, then try again."
        return render_template("login.html", error=message, accounts=True), 429
    return {"error": {"code": "too_many_requests", "message": e.description}}, 429


def logout():
    """Sign out: every cookie of this user ends, and so do the answers they started. With no
    account, every local cookie ends (copies too): the local sign-in epoch changes."""
    require_same_origin(cookie=True)
    j = current_app.extensions["jarvis"]
    if g.user is not None and (g.credential or "").startswith("cookie:"):
        j.accounts.end_cookies(g.user.id)
        prefix = f"cookie:{g.user.id}:"
        j.registry.cancel_where(lambda s: (s.credential or "").startswith(prefix), "revoked")
    elif g.get("local_cookie"):
        epoch().renew()
    session.clear()
    if request.is_json or request.accept_mimetypes.best == "application/json":
        return {"signed_out": True}
    return redirect(url_for("login"))


def _body() -> Mapping:
    if not request.is_json:
        return request.form
    return json_object() or {}


def _limit_storage(cfg: Config) -> dict:
    """Where sign-in attempts are counted: in Redis when processes share one (so N processes do not
    allow N times the attempts), falling back to this process's memory while Redis is away."""
    if not cfg.redis_url:
        return {"storage_uri": "memory://"}
    timeout = {"socket_timeout": cfg.redis_timeout_s, "socket_connect_timeout": cfg.redis_timeout_s}
    return {
        "storage_uri": "redis+unix://" + cfg.redis_url.removeprefix("unix://")
        if cfg.redis_url.startswith("unix://")
        else cfg.redis_url,
        "storage_options": timeout,
        "in_memory_fallback_enabled": True,
        "key_prefix": "jarvis",
    }


def _attempt_key() -> str:
    return f"{client_address()}|{str(_body().get('name', ''))[:64]}"
