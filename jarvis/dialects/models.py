"""Ollama's ``/api/show`` and ``/api/ps``: what a front-end asks about a model before it chats
(Open WebUI, Continue and aider read the context length and capabilities from ``/api/show``).
Routes only: each is passed through to the host that has the model, or answered by the backend
itself when it is not Ollama (the embedded model, an OpenAI-compatible server)."""

from __future__ import annotations

from flask import Blueprint, current_app

from . import fields, ollama

bp = Blueprint("ollama_models", __name__, url_prefix="/api")

SHOW_FIELDS = fields.Fields({"model", "name", "verbose"}, {})


@bp.post("/show")
def show():
    j = current_app.extensions["jarvis"]
    body = fields.read_json(j.config)
    SHOW_FIELDS.check(body)
    model = body.get("model") or body.get("name")  # "name": older clients
    if not isinstance(model, str) or not model:
        raise fields.bad('"model" must name a model', "model")
    return j.upstream.show(fields.model_name(model, ""))


@bp.get("/ps")
def ps():
    return {"models": current_app.extensions["jarvis"].upstream.running()}


bp.register_error_handler(Exception, ollama.error)
