"""HTTP routes of the JSON API's chats (list, create, rename, search, export, import, delete), the
models, health and metrics, and the error handlers every route shares: parse, call the core, answer.
An answer's routes (send, regenerate, versions, stop, attach) are in answers.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..errors import (
    AtCapacity,
    BadRequest,
    Busy,
    JarvisError,
    PromptTooLarge,
    StoreError,
    TooManyRequests,
    UpstreamError,
)
from ..status import Reason
from ..store import chat_settings, transfer
from ..store.sessions import TITLE_MAX_CHARS
from .answers import MODEL_NAME
from .auth import owner, signed_in
from .bodies import json_body, one_line

bp = Blueprint("api", __name__)


def jarvis():
    return current_app.extensions["jarvis"]


class Imports:
    """The imports being parsed and stored: one at a time per account and ``limit`` in the process,
    so imports together take a few times what one may (MAX_IMPORT_VALUES bounds that)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._owners: set[int | None] = set()
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, owner: int | None) -> Iterator[None]:
        with self._lock:
            if owner in self._owners:
                message = "an import of yours is running; send this one when it ends"
                raise TooManyRequests(message, code="import_running")
            if len(self._owners) >= self.limit:
                raise Busy(f"{self.limit} imports are running; try again shortly", code="import_busy")
            self._owners.add(owner)
        try:
            yield
        finally:
            with self._lock:
                self._owners.discard(owner)


@bp.record_once
def _init(state) -> None:
    state.app.extensions["jarvis.imports"] = Imports(state.app.extensions["jarvis"].config.max_imports)


@bp.post("/api/sessions")
def create_session():
    return jsonify(jarvis().store.create_session(owner())), 201


@bp.get("/api/sessions")
def list_sessions():
    return {"sessions": jarvis().store.list_sessions(owner())}


@bp.get("/api/sessions/<session_id>")
def get_session(session_id: str):
    session = jarvis().store.get_session(session_id, owner())
    for m in session["messages"]:
        named = (m["meta"] or {}).get("images") if m["role"] == "user" else None
        if named:  # relative, as every URL of the page: it may be served under a path
            m["images"] = [{**n, "url": f"api/images/{n['digest']}"} for n in named]
    return session


@bp.get("/api/images/<digest>")
def get_image(digest: str):
    """An image of a prompt, to the owner of a chat holding it (404 to anyone else, as unknown)."""
    image = jarvis().store.image(digest, owner())
    response = Response(image.data, mimetype=image.mime)
    # named by its content hash: it never changes; the type is read from the bytes, never guessed again
    response.headers["Cache-Control"] = "private, max-age=31536000, immutable"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.patch("/api/sessions/<session_id>")
def change_session(session_id: str):
    store = jarvis().store
    body = json_body(64 * 1024)
    if "title" not in body and "settings" not in body:
        raise BadRequest('send "title", "settings" or both')
    settings = None
    if "settings" in body:  # checked before anything is written: a bad field changes nothing
        settings = chat_settings.merge(store.settings(session_id, owner()), body["settings"])
    session = None
    if "title" in body:
        title = body["title"]
        if isinstance(title, str):
            title = one_line(title)  # a title is shown in a list: no line breaks, no terminal escapes
        if not isinstance(title, str) or not title:
            raise BadRequest('"title" must be a non-empty string')
        if len(title) > TITLE_MAX_CHARS:
            raise BadRequest(f'"title" must be at most {TITLE_MAX_CHARS} characters')
        session = store.rename_session(session_id, title, owner())
    if settings is not None:
        session = store.set_settings(session_id, settings, owner())
    return session


@bp.get("/api/search")
def search():
    query = request.args.get("q", "")
    if len(query) > 200:
        raise BadRequest("a search is at most 200 characters")
    return {"sessions": jarvis().store.search(query, owner())}


@bp.get("/api/sessions/<session_id>/export")
def export_session(session_id: str):
    session = jarvis().store.get_session(session_id, owner())
    fmt = request.args.get("format", "json")
    if fmt == "md":
        response = Response(transfer.to_markdown(session), mimetype="text/markdown")
    elif fmt == "json":
        response = jsonify(transfer.to_json(session, jarvis().store.images_of(session_id)))
    else:
        raise BadRequest('"format" must be md or json')
    name = transfer.filename(session, fmt)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@bp.post("/api/sessions/import")
def import_session():
    j = jarvis()
    with current_app.extensions["jarvis.imports"].slot(owner()):  # taken before the body is parsed
        body = json_body(transfer.MAX_IMPORT_BYTES, transfer.MAX_IMPORT_VALUES)
        limit = max(j.config.max_prompt_chars, j.config.max_answer_chars)
        title, messages, settings = transfer.parse_import(
            body, limit, TITLE_MAX_CHARS, j.config.max_image_bytes
        )
        del body  # the parsed export: the messages hold what is kept of it
        session = j.store.import_session(title, messages, owner(), settings)
    return jsonify(session), 201


@bp.delete("/api/sessions/<session_id>")
def delete_session(session_id: str):
    j = jarvis()
    j.store.require_session(session_id, owner())  # another user's session is not found, as unknown ones
    j.registry.stop(session_id, Reason.DELETED)
    j.store.delete_session(session_id, owner())
    return {"deleted": True}


@bp.get("/api/models")
def models():
    j = jarvis()
    body = {"models": j.upstream.models(), "default": j.upstream.default_model, "backend": j.upstream.name}
    hosts = j.health.latest()[0].get("hosts")  # several hosts: each with its state, for the picker
    return body if hosts is None else {**body, "hosts": hosts}


@bp.get("/api/models/<path:name>")
def model(name: str):
    """What a model can do beyond text ("vision", "tools", "thinking"...); null when the backend
    cannot tell. The page offers images when "vision" is listed."""
    if not MODEL_NAME.fullmatch(name):
        raise BadRequest("a model name is letters, digits and . _ : / @ + -")
    upstream = jarvis().upstream
    has = upstream.capabilities(name) if hasattr(upstream, "capabilities") else None
    return {"name": name, "capabilities": None if has is None else sorted(has)}


TOOLS_LISTING_S = 3.0  # what a listing waits for servers to start; slower ones show up once started


@bp.get("/api/tools")
def tools():
    """The MCP servers of JARVIS_MCP_CONFIG and their tools, as the model sees them (NAME__TOOL)."""
    box = jarvis().tools
    if box is not None and any(s["state"] == "not started" for s in box.describe()):
        box.tools(TOOLS_LISTING_S)  # listing is a first use: start them, for a bounded while
    servers = box.describe() if box is not None else []
    for server in servers:
        for tool in server.get("tools") or ():
            tool["id"] = f"{server['server']}__{tool['name']}"
    return {"configured": box is not None, "servers": servers}


@bp.get("/metrics")
def metrics():
    return Response(jarvis().metrics.render(), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/healthz")
def healthz():
    j = jarvis()
    upstream, _ = j.health.latest()  # probed in the background: a hung model server costs nothing here
    coord = j.coord.health() if j.coord is not None else None  # several processes share Redis
    shared = {"coordination_ok": coord["ok"]} if coord else {}
    if not signed_in():  # open to anyone: up or not, nothing more
        return {"status": "ok", "upstream_ok": upstream["ok"], **shared}
    return {
        **shared,
        **({"coordination": coord} if coord else {}),
        "status": "ok",
        "active_streams": j.registry.active(),
        "max_streams": j.config.max_streams,
        "backend": j.upstream.name,
        "model": j.upstream.default_model,
        "upstream_ok": upstream["ok"],
        "upstream": upstream,
        **({"hosts": upstream["hosts"]} if "hosts" in upstream else {}),
    }


def _wants_page() -> bool:
    """A browser asking for a page gets one; the APIs answer JSON whatever the client accepts."""
    if request.path.startswith(("/api/", "/v1/")) or request.path in ("/api", "/v1"):
        return False
    accept = request.accept_mimetypes
    return accept.best_match(["application/json", "text/html"]) == "text/html" and accept["text/html"] > 0


@bp.app_errorhandler(JarvisError)
def jarvis_error(e: JarvisError):
    param = getattr(e, "field", None) or getattr(e, "param", None)  # the field refused, where known
    response = jsonify({"error": {**e.to_dict(), **({"param": param} if param else {})}})
    response.status_code = e.http_status
    if hasattr(e, "retry_after_s"):
        response.headers["Retry-After"] = str(e.retry_after_s)
    if isinstance(e, AtCapacity):
        jarvis().metrics.rejected.labels("at_capacity").inc()
    if isinstance(e, StoreError):
        current_app.logger.error("store error on %s: %s", request.path, e.message)
    if isinstance(e, UpstreamError):
        current_app.logger.warning("upstream error on %s: %s", request.path, e.code)
    return response


@bp.app_errorhandler(Exception)
def internal_error(e: Exception):  # Flask sends HTTPExceptions to http_error, the closer match
    current_app.logger.exception("unhandled error on %s", request.path)
    return jarvis_error(JarvisError("internal error; the server log has the details"))


@bp.app_errorhandler(HTTPException)
def http_error(e: HTTPException):
    if isinstance(e, RequestEntityTooLarge):
        return jarvis_error(PromptTooLarge("the request body is too large"))
    if e.code == 404 and _wants_page():
        return render_template("404.html"), 404
    response = jsonify(
        {"error": {"code": (e.name or "error").lower().replace(" ", "_"), "message": e.description}}
    )
    response.status_code = e.code or 500
    return response
