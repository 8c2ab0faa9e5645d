"""HTTP routes of the JSON and SSE API: parse, call the core, answer."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Iterator
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
    UnsupportedMediaType,
    UpstreamError,
)
from ..lifecycle.stream import Stream
from ..status import Reason
from ..store import chat_settings, transfer
from ..store.sessions import LEAF, TITLE_MAX_CHARS
from .auth import credential, owner, proof, signed_in
from .bodies import json_object, one_line

bp = Blueprint("api", __name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# what model names are made of (Ollama's name:tag, paths of GGUF files): nothing that could steer a log
MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@+-]{1,200}")
MAX_ID = 2**63 - 1  # SQLite's largest integer


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
    return jarvis().store.get_session(session_id, owner())


@bp.patch("/api/sessions/<session_id>")
def change_session(session_id: str):
    store = jarvis().store
    body = _json_body(64 * 1024)
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
        response = jsonify(transfer.to_json(session))
    else:
        raise BadRequest('"format" must be md or json')
    name = transfer.filename(session, fmt)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@bp.post("/api/sessions/import")
def import_session():
    j = jarvis()
    with current_app.extensions["jarvis.imports"].slot(owner()):  # taken before the body is parsed
        body = _json_body(transfer.MAX_IMPORT_BYTES, transfer.MAX_IMPORT_VALUES)
        limit = max(j.config.max_prompt_chars, j.config.max_answer_chars)
        title, messages, settings = transfer.parse_import(body, limit, TITLE_MAX_CHARS)
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


@bp.post("/api/sessions/<session_id>/stop")
def stop(session_id: str):
    j = jarvis()
    # the registry knows whose answer it is: the caller's live answer here is stopped without the
    # database, so Stop works while it hangs; anything else is looked up as before
    live = live_answer(j.registry, session_id)
    if live is not None and live.owner == owner() and live.cancel(Reason.STOPPED):
        return {"stopped": True}
    j.store.require_session(session_id, owner())  # another user's session is not found, as unknown ones
    return {"stopped": j.registry.stop(session_id)}


def live_answer(registry, session_id: str) -> Stream | None:
    """The session's newest answer live in this process, if it has not ended."""
    newest = registry.current(session_id)  # a session's streams are keyed by its id
    if newest is None or newest.session_id != session_id or newest.status is not None:
        return None
    return newest


@bp.get("/api/sessions/<session_id>/stream")
def attach(session_id: str):
    """The session's live answer: what was streamed so far (after Last-Event-ID), then live; 204 if none.
    A HEAD only says which (Flask answers it through this view): it attaches no reader and starts no
    mirror, since nobody will read it."""
    j = jarvis()
    j.store.require_session(session_id, owner())
    if request.method == "HEAD":
        live = j.registry.is_live(session_id) or (
            j.coord is not None and j.coord.mirror.held_elsewhere(session_id)
        )
        return Response(mimetype="text/event-stream", headers=SSE_HEADERS) if live else Response(status=204)
    last = request.headers.get("Last-Event-ID")
    gone = request.environ.get("waitress.client_disconnected")
    release = j.registry.slots.admit_reader(owner())  # 429 when the slots or the account's readers are full
    try:
        tap = j.registry.attach(session_id, last, gone)
        if tap is None and j.coord is not None:  # live in another process, perhaps: read it through Redis
            tap = j.coord.mirror.remote_attach(session_id, last, j.config.heartbeat_s, gone)
    except BaseException:
        release()
        raise
    if tap is None:
        release()
        return Response(status=204)
    response = Response(tap, mimetype="text/event-stream", headers=SSE_HEADERS)
    response.call_on_close(release)  # the server closes every body it was given, read or not
    return response


@bp.post("/api/sessions/<session_id>/messages")
def send_message(session_id: str):
    j = jarvis()
    content, model = _read_prompt(j.config, j.upstream.default_model)
    parent_id = _parent_id(json_object())
    settings = j.store.settings(session_id, owner())  # 404 for another user's session, as unknown ones
    messages = [*j.store.context(session_id, parent_id), {"role": "user", "content": content}]
    return _answer(
        session_id,
        model,
        messages,
        lambda trace_id: j.store.add_exchange(session_id, content, trace_id, model, parent_id),
        settings,
    )


@bp.post(f"/api/sessions/<session_id>/messages/<int(max={MAX_ID}):answer_id>/regenerate")
def regenerate(session_id: str, answer_id: int):
    j = jarvis()
    body = _json_body(64 * 1024) if request.content_length or request.is_json else {}
    model = _model(body, j.upstream.default_model)
    settings = j.store.settings(session_id, owner())
    prompt_id = j.store.prompt_of(session_id, answer_id)
    messages = j.store.context(session_id, prompt_id)
    return _answer(
        session_id,
        model,
        messages,
        lambda trace_id: (prompt_id, j.store.add_answer(session_id, prompt_id, trace_id, model)),
        settings,
    )


@bp.post("/api/sessions/<session_id>/leaf")
def show_version(session_id: str):
    message_id = _json_body(64 * 1024).get("message_id")
    if not _is_id(message_id):
        raise BadRequest('"message_id" must be the id of a message of this session')
    return jarvis().store.show_version(session_id, message_id, owner())


def _answer(
    session_id: str,
    model: str,
    messages: list[dict],
    store_rows: Callable[[str], tuple[int, int]],
    settings: dict,
) -> Response:
    """Start an answer to ``messages`` with the chat's ``settings`` and stream it: build its Stream,
    store its rows (``store_rows(trace_id)`` returns the prompt's id and the answer's), hand it over."""
    j = jarvis()
    trace_id = secrets.token_hex(8)
    stream = Stream(
        session_id=session_id,
        trace_id=trace_id,
        model=model,
        messages=chat_settings.conversation(settings, messages),
        options=chat_settings.options(settings),
        upstream=j.upstream,
        store=j.store,
        config=j.config,
        release=j.registry.release,
        owner=owner(),
        credential=credential(),
        client_gone=request.environ.get("waitress.client_disconnected"),
        metrics=j.metrics,
        detach_grace_s=j.config.detach_grace_s,
        keepers=j.registry.keepers,
    )
    stream.proof = proof()  # its Stop needs no database
    # the rows are stored first: a failed write must leave the session's running answer alone
    stream.user_message_id, stream.message_id = store_rows(trace_id)
    j.registry.hand_over(stream)  # supersedes the session's stream; 503 when full
    if stream.credential:
        j.revocations.watch()
    return Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS)


@bp.get("/api/models")
def models():
    j = jarvis()
    body = {"models": j.upstream.models(), "default": j.upstream.default_model, "backend": j.upstream.name}
    hosts = j.health.latest()[0].get("hosts")  # several hosts: each with its state, for the picker
    return body if hosts is None else {**body, "hosts": hosts}


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


def _json_body(limit: int, max_values: int | None = None) -> dict:
    """The request's JSON object, its size bounded before it is read (and, given ``max_values``,
    how many values it holds before it is parsed)."""
    if not request.is_json:
        raise UnsupportedMediaType("send application/json")
    if request.content_length is not None and request.content_length > limit:
        raise PromptTooLarge(f"the request body is larger than {limit} bytes")
    request.max_content_length = limit  # bounds a chunked body too
    body = json_object(max_values=max_values)
    if body is None:
        raise BadRequest("the body must be a JSON object")
    return body


def _read_prompt(config, default_model: str) -> tuple[str, str]:
    if not request.is_json:
        raise UnsupportedMediaType("send the prompt as application/json")
    # a JSON string may spend up to 6 bytes on one character (\\uXXXX)
    limit = config.max_prompt_chars * 6 + 4096
    if request.content_length is not None and request.content_length > limit:
        raise PromptTooLarge(f"the prompt is longer than {config.max_prompt_chars} characters")
    request.max_content_length = limit  # bounds a chunked body too
    body = json_object()
    if body is None:
        raise BadRequest('the body must be a JSON object like {"content": "..."}')
    content = body.get("content")
    if not isinstance(content, str) or not content.strip():
        raise BadRequest('"content" must be a non-empty string')
    if len(content) > config.max_prompt_chars:
        raise PromptTooLarge(f"the prompt is longer than {config.max_prompt_chars} characters")
    return content, _model(body, default_model)


def _model(body: dict, default_model: str) -> str:
    model = body.get("model") or default_model
    if model is not default_model and (not isinstance(model, str) or not MODEL_NAME.fullmatch(model)):
        raise BadRequest('"model" must be a model name (letters, digits and . _ : / @ + -)')
    return model


def _parent_id(body: dict) -> int | None | str:
    """What a new prompt follows: the answer named by "parent_id" (null: none, an edited first
    prompt), or without it the versions shown."""
    if "parent_id" not in body:
        return LEAF
    parent = body["parent_id"]
    if parent is not None and not _is_id(parent):
        raise BadRequest('"parent_id" must be the id of an answer of this session, or null')
    return parent


def _is_id(value: object) -> bool:
    """A message id: an integer SQLite can hold (a bigger one would fail the query, not miss)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def _wants_page() -> bool:
    """A browser asking for a page gets one; the APIs answer JSON whatever the client accepts."""
    if request.path.startswith(("/api/", "/v1/")) or request.path in ("/api", "/v1"):
        return False
    accept = request.accept_mimetypes
    return accept.best_match(["application/json", "text/html"]) == "text/html" and accept["text/html"] > 0


@bp.app_errorhandler(JarvisError)
def jarvis_error(e: JarvisError):
    response = jsonify({"error": e.to_dict()})
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
