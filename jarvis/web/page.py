"""The chat page: one HTML document; everything it runs is a static file."""

from __future__ import annotations

from flask import Blueprint, make_response, render_template

bp = Blueprint("web", __name__, template_folder="templates")


@bp.get("/")
def index():
    """Serve the chat page (it runs under the strict policy set in auth.py: no inline code)."""
    response = make_response(render_template("index.html"))
    response.headers["Cache-Control"] = "no-store"
    return response
