"""HTTP routes of an answer: send a prompt, regenerate an answer, show another version, stop the
live answer and attach to it; parse, call the lifecycle, stream."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from flask import Blueprint, Response, current_app, request

from ..agent import Agent
from ..conversation import Chat, Message
from ..errors import BadRequest, JarvisError, PromptTooLarge, UnsupportedMediaType
from ..lifecycle.stream import Stream
from ..status import Reason
from ..store import chat_settings
from ..store.sessions import LEAF
from .auth import STOPPED_IN_LOOP, credential, owner, proof, shown_live_answer
from .bodies import FORMS, check_request, json_body, json_object, read_images

bp = Blueprint("answers", __name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# what model names are made of (Ollama's name:tag, paths of GGUF files): nothing that could steer a log
MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@+-]{1,200}")
MAX_ID = 2**63 - 1  # SQLite's largest integer


def jarvis():
    return current_app.extensions["jarvis"]


@bp.post("/api/sessions/<session_id>/stop")
def stop(session_id: str):
    j = jarvis()
    # the registry knows whose answer it is: the caller's live answer here is stopped without the
    # database, so Stop works while it hangs; anything else is looked up as before
    live = live_answer(j.registry, session_id)
    if live is not None and live.owner == owner() and live.cancel(Reason.STOPPED):
        return {"stopped": True}
    early = request.environ.get(STOPPED_IN_LOOP)  # this Stop ended it already, in the event loop
    if early is not None and early.owner == owner():
        return {"stopped": True}
    j.store.require_session(session_id, owner())  # another user's session is not found, as unknown ones
    return {"stopped": j.registry.stop(session_id)}


def stoppable_in_loop(app, environ: dict) -> Stream | None:
    """``jarvis serve``'s event loop, on a complete Stop request before any thread starts it: the
    caller's live answer if the request passes every check its thread will make (authentication's
    for a Stop without the database, then no NUL in the path or query), for the loop to cancel;
    else None, and the thread decides as ever. No call here waits: it reads the request and the
    registry."""
    with app.request_context(environ):
        if request.mimetype in FORMS:  # check_request reads a form's body: the thread's to read
            return None
        try:
            live = shown_live_answer()
            if live is None:
                return None
            check_request()
        except JarvisError:  # the thread raises it again, and answers it
            return None
        return live if live.owner == owner() else None


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
    prompt, model = _read_prompt(j.config, j.upstream.default_model)
    parent_id = _parent_id(json_object())
    settings = j.store.settings(session_id, owner())  # 404 for another user's session, as unknown ones
    messages = [*j.store.context(session_id, parent_id), prompt]
    return _answer(
        session_id,
        model,
        messages,
        lambda trace_id: j.store.add_exchange(session_id, prompt, trace_id, model, parent_id),
        settings,
    )


@bp.post(f"/api/sessions/<session_id>/messages/<int(max={MAX_ID}):answer_id>/regenerate")
def regenerate(session_id: str, answer_id: int):
    j = jarvis()
    body = json_body(64 * 1024) if request.content_length or request.is_json else {}
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
    message_id = json_body(64 * 1024).get("message_id")
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
    chat = Chat(
        model=model,
        messages=chat_settings.conversation(settings, messages),
        options=chat_settings.options(settings),
    )
    _refuse_unhonoured(j.upstream, chat)
    stream = Stream(
        session_id=session_id,
        trace_id=trace_id,
        chat=chat,
        upstream=_upstream(j, settings),
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


def _refuse_unhonoured(upstream, chat: Chat) -> None:
    """Refuse (400 naming the field) what the model cannot do, before anything is stored: images
    to a model without vision. A text chat asks nothing a backend could refuse here, so it is
    spared the check (Ollama's is a round trip to /api/show)."""
    check = getattr(upstream, "check", None)  # a test's stub upstream may have none
    if check is not None and chat.wants():
        check(chat)


def _upstream(j, settings: dict):
    """The model, as an agent that may use the chat's tools when Jarvis has any to offer."""
    offered = chat_settings.offered_tools(settings)
    if j.tools is None or offered is False:
        return j.upstream
    return Agent(j.upstream, j.tools, j.config, offered)


def _read_prompt(config, default_model: str) -> tuple[Message, str]:
    """The prompt (its text and images) and the model it is for."""
    if not request.is_json:
        raise UnsupportedMediaType("send the prompt as application/json")
    # a JSON string may spend up to 6 bytes on one character (\\uXXXX); images 4/3 of theirs
    limit = config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PromptTooLarge(
            f"the prompt is longer than {config.max_prompt_chars} characters"
            f" or its images larger than {config.max_images_bytes} bytes"
        )
    request.max_content_length = limit  # bounds a chunked body too
    body = json_object()
    if body is None:
        raise BadRequest('the body must be a JSON object like {"content": "..."}')
    content = body.get("content")
    images = read_images(body.get("images"), config.max_image_bytes, config.max_images_bytes)
    if not isinstance(content, str) or not (content.strip() or images):
        raise BadRequest('"content" must be a non-empty string (it may be "" when images are sent)')
    if len(content) > config.max_prompt_chars:
        raise PromptTooLarge(f"the prompt is longer than {config.max_prompt_chars} characters")
    prompt: Message = {"role": "user", "content": content}
    if images:
        prompt["images"] = images
    return prompt, _model(body, default_model)


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
