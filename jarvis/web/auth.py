"""Who may use Jarvis.

No request is served without a credential. While no account exists, the
credential is the *local token*: generated once into the instance folder (or
``JARVIS_LOCAL_TOKEN``), printed by ``jarvis serve`` as ``/?token=…``, traded
by the page for a cookie, sent by scripts as ``Authorization: Bearer``; and
only loopback clients are served (a forwarded request counts as remote). Once
an account exists, a signed-in cookie or an account's bearer token is needed
instead, and the local token means nothing. ``--insecure-no-auth`` alone
serves without a credential. In every mode the Host header must be an allowed
name (DNS rebinding), and a state-changing request from a browser must come
from our own origin, scheme included; bearer requests are exempt, since no
browser adds them by itself. A request costs at most one indexed SQLite read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from datetime import timedelta
from urllib.parse import urlencode

from flask import Flask, current_app, g, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from .. import log
from ..config import Config
from ..errors import Forbidden, Unauthorized
from . import signin
from .accounts import User
from .bodies import check_request
from .local import (
    LOCAL_ADVICE,
    LocalEpoch,
    current_token,
    epoch,
    fingerprint,
    is_local_token,
    local_token,
    private_secret,
)
from .origin import bearer, is_local, require_allowed_host, require_same_origin, scheme

# the WSGI environ's key for the answer a Stop ended in ``jarvis serve``'s event loop (web/server.py)
STOPPED_IN_LOOP = "jarvis.stopped_in_loop"
OPEN_ENDPOINTS = {"api.healthz", "static", "login", "logout"}
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
        return bool(app.config["SESSION_COOKIE_SECURE"] or scheme() == "https")

    def get_cookie_path(self, app: Flask) -> str:
        # under a sub-path (web.ForwardedPrefix), the cookie is that path's alone
        return request.script_root or super().get_cookie_path(app)


def init_app(app: Flask) -> None:
    """Install the checks, the login routes, the rate limit, the body limit and the security headers."""
    cfg = app.extensions["jarvis"].config
    app.secret_key = cfg.secret_key or private_secret(os.path.join(app.instance_path, "secret_key"))
    app.extensions["jarvis.local_token"] = local_token(cfg)
    app.session_interface = _SessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="jarvis_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=cfg.cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=cfg.cookie_lifetime_s),
        # under any WSGI host: no body is read past this (a prompt may spend 6 bytes a character);
        # a route that takes images raises its own request's limit to cfg.max_body_bytes
        MAX_CONTENT_LENGTH=cfg.max_prompt_chars * 6 + 65536,
    )
    app.extensions["jarvis.local_epoch"] = LocalEpoch(os.path.join(app.instance_path, "local_epoch"))
    signin.init_app(app)
    app.before_request(authenticate)
    app.before_request(check_request)  # after who the caller is: a stranger learns nothing more
    app.after_request(_security_headers)
    if cfg.insecure_no_auth:
        log.event(
            "INSECURE_NO_AUTH",
            logging.WARNING,
            note="with no account, anyone who reaches the port can read and drive Jarvis",
        )


def authenticate():
    """Run before every request: the Host check, then who the caller is."""
    g.user, g.credential, g.signed_in, g.proof = None, None, False, None
    j = current_app.extensions["jarvis"]
    require_allowed_host(j.config)
    if request.endpoint == "static":
        return None
    if request.endpoint == "answers.stop" and _holds_live_answer(j):
        return None
    if not j.accounts.exist():
        return _local_mode(j.config)
    token = bearer()
    if token is not None and not is_local_token(token):
        g.user, token_id = j.accounts.user_for_token(token)
        if g.user is None:
            if request.endpoint in OPEN_ENDPOINTS:
                return None
            raise Unauthorized("the bearer token is not valid (revoked or mistyped)")
        g.credential, g.signed_in, g.proof = f"token:{token_id}", True, _token_proof(token)
        return None
    uid = session.get("uid")
    if uid is not None:
        g.user = j.accounts.user(uid, session.get("gen", -1))
        if g.user is not None:
            g.credential, g.signed_in = f"cookie:{uid}:{g.user.generation}", True
            g.proof = f"cookie:{uid}:{g.user.generation}"
    return _cookie_or_sign_in(
        cookie_ok=g.user is not None, advice="sign in, or send Authorization: Bearer <token>"
    )


def _holds_live_answer(j) -> bool:
    return _shown_answer(j) is not None


def _shown_answer(j):
    """A Stop that shows the credential which sent the prompt of the session's live answer here:
    signed in as that answer's owner without the database, so Stop works while the database hangs.
    An answer this very Stop already ended in the event loop (``STOPPED_IN_LOOP``) counts as live."""
    sid = (request.view_args or {}).get("session_id")
    early = request.environ.get(STOPPED_IN_LOOP)  # set by the server, never from a header (HTTP_*)
    answer = early if early is not None else j.registry.current(sid) if sid else None  # one look
    if answer is None or answer.session_id != sid or not answer.proof:
        return None
    if answer is not early and answer.status is not None:
        return None
    if not any(hmac.compare_digest(answer.proof, p) for p in _shown_proofs()):
        return None
    if answer.owner is None and not is_local():  # the local token: this machine only
        return None
    if not answer.proof.startswith("bearer:"):
        require_same_origin(cookie=True)
    g.user = User(answer.owner, "") if answer.owner is not None else None
    g.credential, g.signed_in, g.proof = answer.credential, True, answer.proof
    return answer


def shown_live_answer():
    """In a request context of a Stop and without the database: the session's live answer if the
    request passes what ``authenticate`` checks of such a Stop (the Host, the credential that sent
    the prompt, the same-origin rule for a cookie), signed in as its owner; else None."""
    j = current_app.extensions["jarvis"]
    g.user, g.credential, g.signed_in, g.proof = None, None, False, None
    require_allowed_host(j.config)
    return _shown_answer(j) if request.endpoint == "answers.stop" else None


def proof() -> str | None:
    """The credential this request signed in with, in a form a later request can show again and be
    checked without the database: a bearer token's digest, or a signed cookie's contents."""
    return g.get("proof")


def _shown_proofs() -> list[str]:
    """Every credential the request carries, as ``proof()`` puts it."""
    token = bearer()
    shown = [_token_proof(token)] if token is not None else []
    if session.get("uid") is not None:
        shown.append(f"cookie:{session['uid']}:{session.get('gen', -1)}")
    if session.get("local"):
        shown.append("local:" + session["local"])
    return shown


def _token_proof(token: str) -> str:
    return "bearer:" + hashlib.sha256(token.encode()).hexdigest()


def _local_mode(cfg: Config):
    if cfg.insecure_no_auth:
        g.signed_in = True
        require_same_origin(cookie=False)
        return None
    if not is_local():
        raise Forbidden(
            f"Jarvis has no account yet and answers only on this machine: {ADVICE}.", code="protected_mode"
        )
    token = bearer()
    if token is not None:
        if is_local_token(token):
            g.signed_in, g.proof = True, _token_proof(token)
        elif request.endpoint not in OPEN_ENDPOINTS:
            raise Unauthorized(f"the bearer token is not the local token: {LOCAL_ADVICE}")
        return None
    offered = request.args.get("token")
    if offered is not None and request.method == "GET" and is_local_token(offered):
        # trade the printed address for a cookie, and drop the token from the address bar
        session.clear()
        session["local"] = fingerprint(current_token(), epoch().current())
        session["csrf"] = secrets.token_urlsafe(24)
        session.permanent = True
        rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
        return redirect(request.script_root + request.path + ("?" + urlencode(rest) if rest else ""))
    cookie_ok = hmac.compare_digest(session.get("local", ""), fingerprint(current_token(), epoch().current()))
    g.signed_in = cookie_ok
    g.local_cookie = cookie_ok
    g.proof = "local:" + session["local"] if cookie_ok else None
    return _cookie_or_sign_in(cookie_ok, LOCAL_ADVICE)


def _cookie_or_sign_in(cookie_ok: bool, advice: str):
    if request.endpoint in OPEN_ENDPOINTS:
        if request.endpoint == "login":
            require_same_origin(cookie=False)
        return None
    if not cookie_ok:
        if request.path.startswith(("/api/", "/v1/")) or request.endpoint == "api.metrics":
            raise Unauthorized(advice)
        return redirect(url_for("login"))
    require_same_origin(cookie=True)
    return None


def owner() -> int | None:
    """The session owner for this request: the user's id, or None with no accounts."""
    return g.user.id if g.get("user") is not None else None


def credential() -> str | None:
    """What signed this request (``token:<id>``, ``cookie:<uid>:<gen>``), for revocation; None locally."""
    return g.get("credential")


def signed_in() -> bool:
    """True when the request carries a valid credential (or none is needed)."""
    return bool(g.get("signed_in"))


def _security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
