"""What the OpenAI and Ollama dialects share: a bounded JSON body, a checked conversation,
the model check, one call through the core, and errors in the dialect's shape.

The dialect modules only translate; every rule here is the native API's rule
(body limits, prompt limit, model names), and every answer runs through the
native lifecycle (registry, worker, cancel, cleanup once): a dialect is a
framer and a parser, never a second code path.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flask import Response, current_app, g, request

from .. import log
from ..conversation import Chat, ToolCall
from ..errors import Interrupted, JarvisError, NotFound, Unsupported, UpstreamError
from ..events import End, Event, Framer, Text, Thinking
from ..lifecycle.stream import Stream
from ..metrics import Metrics
from ..status import Status
from ..upstream import Upstream
from ..web import api
from ..web.answers import SSE_HEADERS
from ..web.auth import credential, owner
from .fields import bad

SESSION_HEADER = "X-Jarvis-Session"
FINISHED = (Status.COMPLETED, Status.LENGTH)


@dataclass(frozen=True)
class Call:
    """One checked request of either dialect: the conversation, and how to answer it."""

    chat: Chat
    stream: bool
    include_usage: bool = False  # OpenAI's stream_options.include_usage
    names: Mapping[str, str] = field(default_factory=dict)  # the dialect's names of the core's fields
    end_user: str | None = None  # who the client says its user is (OpenAI's user): logged with the call

    @property
    def model(self) -> str:
        return self.chat.model


@dataclass(frozen=True)
class Answer:
    """A whole answer, read in process for a client that did not ask to stream."""

    text: str
    thinking: str
    tool_calls: list[ToolCall]
    end: End


class ModelNames:
    """The upstream's model names, cached briefly, so an unknown model answers 404 before any stream."""

    FRESH_S = 30.0  # a model pulled meanwhile is seen at the next miss anyway
    MISS_REFRESH_S = 1.0  # at most one listing per second however many unknown names are asked

    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self._lock = threading.Lock()  # guards the cached list; never held across the listing
        self._names: frozenset[str] = frozenset()
        self._listed_at = float("-inf")

    def check(self, model: str) -> None:
        """Raise NotFound (model_not_found) when the upstream surely lacks ``model``."""
        if self._has(model, max_age=self.FRESH_S) or self._has(model, max_age=self.MISS_REFRESH_S):
            return
        raise NotFound(f"the model {model!r} is not available", code="model_not_found")

    def _has(self, model: str, max_age: float) -> bool:
        with self._lock:
            names, age = self._names, time.monotonic() - self._listed_at
        if age > max_age:
            try:
                listed = self.upstream.models()  # bounded by the upstream's own timeouts
            except UpstreamError:
                return True  # cannot tell: the stream reports the upstream's failure itself
            names = frozenset(m.get("name", "") for m in listed)
            with self._lock:
                self._names, self._listed_at = names, time.monotonic()
        return model in names or f"{model}:latest" in names or model.removesuffix(":latest") in names


class Metered:
    """A framer that counts the tokens of each answer it ends, per dialect and user."""

    def __init__(self, framer: Framer, metrics: Metrics, api: str, user: str):
        self.framer, self.metrics, self.labels = framer, metrics, (api, user)

    def frame(self, event: Event, id: str | None = None) -> bytes:
        if isinstance(event, End):
            self.count(event)
        return self.framer.frame(event, id)

    def count(self, end: End) -> None:
        for kind, n in (end.meta.get("usage") or {}).items():
            self.metrics.compat_tokens.labels(*self.labels, kind.removesuffix("_tokens")).inc(n)


def start(call: Call, framer: Framer, api: str) -> Stream:
    """Hand ``call`` to the core: stateless, or joining the caller's session named by X-Jarvis-Session."""
    j = current_app.extensions["jarvis"]
    session_id = request.headers.get(SESSION_HEADER) or None
    chat = call.chat
    if session_id is not None:
        j.store.require_session(session_id, owner())  # another user's session is not found
        if chat.messages[-1]["role"] not in ("user", "tool"):
            raise bad(f"with {SESSION_HEADER} the last message must be the user's or a tool's", "messages")
    models = current_app.extensions.setdefault("jarvis.model_names", ModelNames(j.upstream))
    models.check(call.model)
    try:
        j.upstream.check(chat)  # what the backend cannot honour is refused, before anything is stored
    except Unsupported as e:
        e.param = call.names.get(e.field, e.field)
        raise
    trace_id = secrets.token_hex(8)
    user = g.user.name if g.get("user") is not None else ""
    stream = Stream(
        session_id=session_id,
        key=session_id or "call:" + trace_id,  # a stateless call supersedes nothing
        trace_id=trace_id,
        chat=chat,
        upstream=j.upstream,
        config=j.config,
        release=j.registry.release,
        store=j.store if session_id else None,
        owner=owner(),
        credential=credential(),
        client_gone=request.environ.get("waitress.client_disconnected"),
        metrics=j.metrics,
        framer=Metered(framer, j.metrics, api, user),
    )
    if session_id is not None:
        # the prompt is stored before the model is called, and before it supersedes anything
        stream.user_message_id, stream.message_id = j.store.add_exchange(
            session_id, chat.messages[-1], trace_id, call.model
        )
    j.registry.hand_over(stream)
    if stream.credential:
        j.revocations.watch()  # revoking the credential ends this call too
    j.metrics.compat_calls.labels(api, user).inc()
    if call.end_user:
        log.event("dialect_call", trace_id=trace_id, api=api, end_user=call.end_user[:256])
    return stream


def respond(call: Call, framer: Framer, api: str, mimetype: str, final: Callable[[Answer], object]):
    """Start ``call`` and answer it: the framed stream when the client asked to stream, else
    ``final(answer)`` once the whole answer is read."""
    stream = start(call, framer, api)
    if call.stream:
        return Response(stream, mimetype=mimetype, headers=SSE_HEADERS)
    return final(collect(stream))


def collect(stream: Stream) -> Answer:
    """Read the whole answer in-process (a non-streaming call); raises why it did not finish.

    The stream ends once either way: a client that leaves meanwhile is seen by the registry.
    """
    texts, thoughts, calls, end = [], [], [], None
    try:
        for event in stream.events():
            if isinstance(event, Text):
                texts.append(event.text)
            elif isinstance(event, Thinking):
                thoughts.append(event.text)
            elif isinstance(event, ToolCall):
                calls.append(event)
            elif isinstance(event, End):
                stream.framer.count(event)
                end = event
                break
    finally:
        stream.close()
    if end is None:
        raise JarvisError("the stream ended without an end event")  # a bug in the core, said loudly
    failure = end_error(end, stream.outcome.error)
    if failure is not None:
        raise failure
    return Answer("".join(texts), "".join(thoughts), calls, end)


def end_error(end: End, error: JarvisError | None = None) -> JarvisError | None:
    """Why the answer did not finish, as an error; None when the model finished it."""
    if end.status in FINISHED:
        return None
    if error is not None:
        return error
    if end.error:
        return UpstreamError(end.error.get("message", ""), code=end.error.get("code"))
    return Interrupted(str(end.reason or end.status))


def dialect_status(status: int, code: str | None) -> int:
    """The status the official clients map to the right exception: bad input of any kind is 400."""
    if code == "model_not_found":
        return 404
    return 400 if status in (413, 415) else status


def error_answer(e: Exception, body: Callable[[int, dict], dict]) -> Response:
    """The native error answer turned into a dialect's: same logging, metrics and headers, new body."""
    native = api.jarvis_error(e) if isinstance(e, JarvisError) else api.internal_error(e)
    if isinstance(e, Interrupted):
        native.headers["x-should-retry"] = "false"  # a client would retry a 409 into the newer answer
    error = (native.get_json(silent=True) or {}).get("error") or {}
    error["param"] = getattr(e, "param", None)
    status = dialect_status(native.status_code, error.get("code"))
    native.set_data(json.dumps(body(status, error)))
    native.status_code = status
    native.mimetype = "application/json"
    return native
