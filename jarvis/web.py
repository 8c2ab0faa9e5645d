"""The chat page: one HTML document; everything it runs is a static file."""

from __future__ import annotations

from flask import Blueprint, make_response, render_template

bp = Blueprint("web", __name__, template_folder="templates")

# The page loads nothing inline and nothing from another origin, so it runs under this policy.
CONTENT_SECURITY_POLICY = "default-src 'self'; frame-ancestors 'none'"


@bp.get("/")
def index():
    """Serve the chat page."""
    response = make_response(render_template("index.html"))
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers["Cache-Control"] = "no-store"
    return response
