"""The chat page: one HTML document; everything it runs is a static file.

The page calls the API by paths relative to itself, and the server emits its own paths (links,
redirects, the cookie's path) under ``SCRIPT_NAME``, which :class:`ForwardedPrefix` takes from a
trusted proxy's ``X-Forwarded-Prefix``: so Jarvis can be served under a sub-path (``/jarvis/``).
"""

from __future__ import annotations

import ipaddress
import re

from flask import Blueprint, make_response, render_template

from ..config import split_list

bp = Blueprint("web", __name__, template_folder="templates")

# a path of plain segments: nothing that could turn a link into another host (//evil) or a script
PREFIX = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")


@bp.get("/")
def index():
    """Serve the chat page (it runs under the strict policy set in auth.py: no inline code)."""
    response = make_response(render_template("index.html"))
    response.headers["Cache-Control"] = "no-store"
    return response


class ForwardedPrefix:
    """WSGI middleware: the sub-path a trusted proxy serves Jarvis under (its ``X-Forwarded-Prefix``,
    the prefix it stripped) becomes ``SCRIPT_NAME``, as werkzeug's ProxyFix(x_prefix=1) does; from
    any other address the header is ignored, as ``X-Forwarded-For`` and ``-Proto`` are."""

    def __init__(self, wsgi_app, trusted_proxies: str):
        self.wsgi_app = wsgi_app
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in split_list(trusted_proxies)]

    def __call__(self, environ, start_response):
        prefix = environ.get("HTTP_X_FORWARDED_PREFIX", "").strip().rstrip("/")
        if prefix and PREFIX.fullmatch(prefix) and self._trusted(environ.get("REMOTE_ADDR", "")):
            environ["SCRIPT_NAME"] = prefix
        return self.wsgi_app(environ, start_response)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)
