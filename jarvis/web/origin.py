"""Where a request comes from: the client's address and scheme (believed from a trusted proxy
only), whether it is this machine, whether its Host is a name we answer to, and whether a
state-changing request comes from our own origin (DNS rebinding and cross-site requests)."""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from flask import current_app, request, session

from ..config import Config, split_list
from ..errors import Forbidden

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# any of these means a proxy forwarded the request (plain waitress strips the X-Forwarded ones)
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP", "Via")


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


def scheme() -> str:
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


def require_allowed_host(cfg: Config) -> None:
    host = _host_name()
    allowed = {h.lower().rstrip(".") for h in split_list(cfg.allowed_hosts)}
    if _is_loopback_name(host) or host in allowed or "*" in allowed:
        return
    shown = host if len(host) <= 64 else host[:64] + "…"
    raise Forbidden(
        f"this server does not answer to the name {shown!r}; list it in JARVIS_ALLOWED_HOSTS",
        code="host_not_allowed",
    )


def is_local() -> bool:
    if any(request.headers.get(h) for h in PROXY_HEADERS):
        return False  # whoever the proxy serves is not this machine
    try:
        if not ipaddress.ip_address(request.remote_addr or "").is_loopback:
            return False
    except ValueError:
        return False
    return _is_loopback_name(_host_name())


def require_same_origin(cookie: bool) -> None:
    if request.method not in UNSAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        try:
            parts = urlsplit(origin)
        except ValueError:
            parts = None
        # the scheme too: http://host is another origin than https://host
        if parts is None or parts.scheme.lower() != scheme() or parts.netloc.lower() != request.host.lower():
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


# the routes whose clients send the token as x-api-key (Anthropic's), as well as a bearer token
API_KEY_BLUEPRINTS = frozenset({"anthropic"})


def bearer() -> str | None:
    """The token the request carries: ``Authorization: Bearer``, or on Anthropic's routes ``x-api-key``.

    Like a bearer header, x-api-key is one no browser adds by itself (a cross-origin page would need
    a CORS preflight Jarvis never grants), so it is as safe from forged requests; it is read only
    where Anthropic's clients send it, so no other route gains a second way in.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.blueprint in API_KEY_BLUEPRINTS:
        return request.headers.get("x-api-key", "").strip() or None
    return None
