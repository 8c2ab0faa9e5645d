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
import ipaddress
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

from flask import Flask, current_app, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from .. import log
from ..config import MIN_SECRET_CHARS, Config, split_list
from ..errors import BadRequest, Busy, Forbidden, Unauthorized
from .accounts import User
from .bodies import check_request, json_object

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# any of these means a proxy forwarded the request (plain waitress strips the X-Forwarded ones)
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP", "Via")
OPEN_ENDPOINTS = {"api.healthz", "static", "login", "logout"}
# every attempt counts, before the password is checked, per client address and account name, and
# per client address whatever the name (JARVIS_LOGIN_ADDRESS_LIMIT): rotating names buys no hashes
LOGIN_LIMIT = "10 per minute"
ADVICE = "create an account with `jarvis user add NAME` to use Jarvis from another machine"
LOCAL_ADVICE = (
    "send Authorization: Bearer <local token>, or open the address `jarvis serve` printed "
    "(the token is in the file local_token of the instance folder)"
)
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
        return bool(app.config["SESSION_COOKIE_SECURE"] or _scheme() == "https")

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
        # under any WSGI host: no body is read past this (a prompt may spend 6 bytes a character)
        MAX_CONTENT_LENGTH=cfg.max_prompt_chars * 6 + 65536,
    )
    limiter = Limiter(client_address, app=app, headers_enabled=True, **_limit_storage(cfg))
    view = limiter.limit(LOGIN_LIMIT, key_func=_attempt_key, methods=["POST"])(login)
    per_address = f"{cfg.login_address_limit} per minute"
    view = limiter.limit(per_address, key_func=client_address, methods=["POST"], scope="login-address")(view)
    # the password checks running at once: each takes a core and about 32 MB (scrypt)
    app.extensions["jarvis.hashing"] = threading.BoundedSemaphore(cfg.login_hashes)
    app.extensions["jarvis.local_epoch"] = LocalEpoch(os.path.join(app.instance_path, "local_epoch"))
    app.register_error_handler(RateLimitExceeded, _login_limited)
    app.add_url_rule("/login", "login", view, methods=["GET", "POST"])
    app.add_url_rule("/logout", "logout", logout, methods=["POST"])
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
    _require_allowed_host(j.config)
    if request.endpoint == "static":
        return None
    if request.endpoint == "api.stop" and _holds_live_answer(j):
        return None
    if not j.accounts.exist():
        return _local_mode(j.config)
    token = _bearer()
    if token is not None and not _is_local_token(token):
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
    """A Stop that shows the credential which sent the prompt of the session's live answer here:
    signed in as that answer's owner without the database, so Stop works while the database hangs."""
    sid = (request.view_args or {}).get("session_id")
    answer = j.registry.current(sid) if sid else None  # one look, not a scan of every live stream
    if answer is None or answer.session_id != sid or answer.status is not None or not answer.proof:
        return False
    if not any(hmac.compare_digest(answer.proof, p) for p in _shown_proofs()):
        return False
    if answer.owner is None and not _is_local():  # the local token: this machine only
        return False
    if not answer.proof.startswith("bearer:"):
        _require_same_origin(cookie=True)
    g.user = User(answer.owner, "") if answer.owner is not None else None
    g.credential, g.signed_in, g.proof = answer.credential, True, answer.proof
    return True


def proof() -> str | None:
    """The credential this request signed in with, in a form a later request can show again and be
    checked without the database: a bearer token's digest, or a signed cookie's contents."""
    return g.get("proof")


def _shown_proofs() -> list[str]:
    """Every credential the request carries, as ``proof()`` puts it."""
    token = _bearer()
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
        _require_same_origin(cookie=False)
        return None
    if not _is_local():
        raise Forbidden(
            f"Jarvis has no account yet and answers only on this machine: {ADVICE}.", code="protected_mode"
        )
    token = _bearer()
    if token is not None:
        if _is_local_token(token):
            g.signed_in, g.proof = True, _token_proof(token)
        elif request.endpoint not in OPEN_ENDPOINTS:
            raise Unauthorized(f"the bearer token is not the local token: {LOCAL_ADVICE}")
        return None
    offered = request.args.get("token")
    if offered is not None and request.method == "GET" and _is_local_token(offered):
        # trade the printed address for a cookie, and drop the token from the address bar
        session.clear()
        session["local"] = _fingerprint(_local(), _epoch().current())
        session["csrf"] = secrets.token_urlsafe(24)
        session.permanent = True
        rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
        return redirect(request.script_root + request.path + ("?" + urlencode(rest) if rest else ""))
    cookie_ok = hmac.compare_digest(session.get("local", ""), _fingerprint(_local(), _epoch().current()))
    g.signed_in = cookie_ok
    g.local_cookie = cookie_ok
    g.proof = "local:" + session["local"] if cookie_ok else None
    return _cookie_or_sign_in(cookie_ok, LOCAL_ADVICE)


def _cookie_or_sign_in(cookie_ok: bool, advice: str):
    if request.endpoint in OPEN_ENDPOINTS:
        if request.endpoint == "login":
            _require_same_origin(cookie=False)
        return None
    if not cookie_ok:
        if request.path.startswith(("/api/", "/v1/")) or request.endpoint == "api.metrics":
            raise Unauthorized(advice)
        return redirect(url_for("login"))
    _require_same_origin(cookie=True)
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
    _require_same_origin(cookie=True)
    j = current_app.extensions["jarvis"]
    if g.user is not None and (g.credential or "").startswith("cookie:"):
        j.accounts.end_cookies(g.user.id)
        prefix = f"cookie:{g.user.id}:"
        j.registry.cancel_where(lambda s: (s.credential or "").startswith(prefix), "revoked")
    elif g.get("local_cookie"):
        _epoch().renew()
    session.clear()
    if request.is_json or request.accept_mimetypes.best == "application/json":
        return {"signed_out": True}
    return redirect(url_for("login"))


def client_address() -> str:
    """The client's address: the peer, or what a trusted proxy says it forwarded for."""
    peer = request.remote_addr or "?"
    trusted = _trusted_proxies()
    if not trusted or not _within(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):  # the nearest hop a trusted proxy did not add
        if not _within(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _scheme() -> str:
    proto = request.headers.get("X-Forwarded-Proto", "")
    trusted = _trusted_proxies()
    if proto and trusted and _within(request.remote_addr or "", trusted):
        return proto.split(",")[0].strip().lower()
    return request.scheme


def _trusted_proxies() -> list:
    cfg = current_app.extensions["jarvis"].config
    return [ipaddress.ip_network(p, strict=False) for p in split_list(cfg.trusted_proxies)]


def _within(address: str, networks: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _host_name() -> str:
    try:
        return (urlsplit("//" + request.host).hostname or "").rstrip(".").lower()
    except ValueError:
        return ""


def _is_loopback_name(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_allowed_host(cfg: Config) -> None:
    host = _host_name()
    allowed = {h.lower().rstrip(".") for h in split_list(cfg.allowed_hosts)}
    if _is_loopback_name(host) or host in allowed or "*" in allowed:
        return
    shown = host if len(host) <= 64 else host[:64] + "…"
    raise Forbidden(
        f"this server does not answer to the name {shown!r}; list it in JARVIS_ALLOWED_HOSTS",
        code="host_not_allowed",
    )


def _is_local() -> bool:
    if any(request.headers.get(h) for h in PROXY_HEADERS):
        return False  # whoever the proxy serves is not this machine
    try:
        if not ipaddress.ip_address(request.remote_addr or "").is_loopback:
            return False
    except ValueError:
        return False
    return _is_loopback_name(_host_name())


def _require_same_origin(cookie: bool) -> None:
    if request.method not in UNSAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        try:
            parts = urlsplit(origin)
        except ValueError:
            parts = None
        # the scheme too: http://host is another origin than https://host
        if parts is None or parts.scheme.lower() != _scheme() or parts.netloc.lower() != request.host.lower():
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


def _local() -> str:
    return current_app.extensions["jarvis.local_token"]


def _is_local_token(token: str) -> bool:
    return hmac.compare_digest(token.encode(), _local().encode())


def _fingerprint(token: str, epoch: str = "") -> str:
    # the cookie is signed, not encrypted: it names the token without holding it
    return hashlib.sha256(
        b"jarvis-local:" + token.encode() + (b":" + epoch.encode() if epoch else b"")
    ).hexdigest()


def _epoch() -> LocalEpoch:
    return current_app.extensions["jarvis.local_epoch"]


class LocalEpoch:
    """The local sign-in epoch: a random value in the instance folder that every local cookie names.
    Sign-out draws a new one, which ends every local cookie, copies included, in every process
    on this folder. None drawn yet (never signed out): the empty epoch.

    Read on every local-mode request: one stat, and a read only when the file changed.
    """

    def __init__(self, path: str):
        self.path = path
        self._seen: tuple[tuple[int, int, int], str] | None = None  # (file identity, value), swapped whole

    def current(self) -> str:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ""
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        seen = self._seen
        if seen is not None and seen[0] == key:
            return seen[1]
        with open(self.path) as f:
            value = f.read().strip()
        self._seen = (key, value)
        return value

    def renew(self) -> None:
        """Draw a new epoch: written whole to a new file, then put in place (another inode: seen at once)."""
        tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(16))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


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


def _security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def local_token(cfg: Config) -> str:
    """The local token: ``JARVIS_LOCAL_TOKEN``, or the one generated into the instance folder."""
    return cfg.local_token or private_secret(os.path.join(cfg.instance_path(), "local_token"))


def private_secret(path: str) -> str:
    """Read a secret file, or make one: mode 0600, and never seen half-written."""
    try:
        with open(path) as f:
            value = f.read().strip()
        if len(value) >= MIN_SECRET_CHARS:
            return value
        log.event("secret_file_regenerated", logging.WARNING, file=os.path.basename(path), chars=len(value))
    except FileNotFoundError:
        value = None
    made = secrets.token_urlsafe(32)  # 256 random bits
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(made)
            f.flush()
            os.fsync(f.fileno())
        if value is not None:
            os.replace(tmp, path)  # an empty or short file, say from a crash during its first write
            return made
        try:
            os.link(tmp, path)  # appears whole, and only if no other process made it first
        except FileExistsError:
            with open(path) as f:
                return f.read().strip()
        return made
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
