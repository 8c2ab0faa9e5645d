"""HTTP routes of the JSON and SSE API: parse, call the core, answer."""

from __future__ import annotations

import secrets

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .auth import owner
from .errors import AtCapacity, BadRequest, JarvisError, PromptTooLarge, UnsupportedMediaType, UpstreamError
from .stream import Stream

bp = Blueprint("api", __name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def jarvis():
    return current_app.extensions["jarvis"]


@bp.post("/api/sessions")
def create_session():
    return jsonify(jarvis().store.create_session(owner())), 201


@bp.get("/api/sessions")
def list_sessions():
    return {"sessions": jarvis().store.list_sessions(owner())}


@bp.get("/api/sessions/<session_id>")
def get_session(session_id: str):
    return jarvis().store.get_session(session_id, owner())


@bp.delete("/api/sessions/<session_id>")
def delete_session(session_id: str):
    j = jarvis()
    j.store.require_session(session_id, owner())  # another user's session is not found, as unknown ones
    j.registry.stop(session_id, "deleted")
    j.store.delete_session(session_id, owner())
    return {"deleted": True}


@bp.post("/api/sessions/<session_id>/stop")
def stop(session_id: str):
    j = jarvis()
    j.store.require_session(session_id, owner())
    return {"stopped": j.registry.stop(session_id)}


@bp.post("/api/sessions/<session_id>/messages")
def send_message(session_id: str):
    j = jarvis()
    content, model = _read_prompt(j.config, j.upstream.default_model)
    j.store.require_session(session_id, owner())
    trace_id = secrets.token_hex(8)
    stream = Stream(
        session_id=session_id,
        trace_id=trace_id,
        model=model,
        messages=[*j.store.context(session_id), {"role": "user", "content": content}],
        upstream=j.upstream,
        store=j.store,
        config=j.config,
        release=j.registry.release,
        owner=owner(),
        client_gone=request.environ.get("waitress.client_disconnected"),
        metrics=j.metrics,
    )
    # the prompt is stored first: a failed write must leave the session's running answer alone
    stream.user_message_id, stream.message_id = j.store.add_exchange(session_id, content, trace_id, model)
    j.registry.hand_over(stream)
    return Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS)


@bp.get("/api/models")
def models():
    j = jarvis()
    return {"models": j.upstream.models(), "default": j.upstream.default_model, "backend": j.upstream.name}


@bp.get("/metrics")
def metrics():
    return Response(jarvis().metrics.render(), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/healthz")
def healthz():
    j = jarvis()
    upstream = j.upstream.health()
    return {
        "status": "ok",
        "active_streams": j.registry.active(),
        "max_streams": j.config.max_streams,
        "backend": j.upstream.name,
        "model": j.upstream.default_model,
        "upstream_ok": upstream["ok"],
        "upstream": upstream,
    }


def _read_prompt(config, default_model: str) -> tuple[str, str]:
    if not request.is_json:
        raise UnsupportedMediaType("send the prompt as application/json")
    # a JSON string may spend up to 6 bytes on one character (\\uXXXX)
    limit = config.max_prompt_chars * 6 + 4096
    if request.content_length is not None and request.content_length > limit:
        raise PromptTooLarge(f"the prompt is longer than {config.max_prompt_chars} characters")
    request.max_content_length = limit  # bounds a chunked body too
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object like {"content": "..."}')
    content = body.get("content")
    if not isinstance(content, str) or not content.strip():
        raise BadRequest('"content" must be a non-empty string')
    if len(content) > config.max_prompt_chars:
        raise PromptTooLarge(f"the prompt is longer than {config.max_prompt_chars} characters")
    model = body.get("model") or default_model
    if not isinstance(model, str) or len(model) > 200:
        raise BadRequest('"model" must be a model name')
    return content, model


@bp.app_errorhandler(JarvisError)
def jarvis_error(e: JarvisError):
    response = jsonify({"error": e.to_dict()})
    response.status_code = e.http_status
    if hasattr(e, "retry_after_s"):
        response.headers["Retry-After"] = str(e.retry_after_s)
    if isinstance(e, AtCapacity):
        jarvis().metrics.rejected.labels("at_capacity").inc()
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
    response = jsonify(
        {"error": {"code": (e.name or "error").lower().replace(" ", "_"), "message": e.description}}
    )
    response.status_code = e.code or 500
    return response
