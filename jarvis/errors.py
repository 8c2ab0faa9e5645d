"""The Jarvis exception tree.

Every error a client can see is one of these. Each carries an HTTP status (for
errors raised before a stream starts), a stable ``code`` string and, for errors
that end a stream, the terminal ``status`` the answer is stored with::

    JarvisError
    ├── RequestError               the client sent something we will not serve
    │   ├── BadRequest             400 bad_request
    │   │   └── Unsupported        400 unsupported (a field the backend cannot honour)
    │   ├── UnsupportedMediaType   415 unsupported_media_type
    │   ├── PromptTooLarge         413 prompt_too_large
    │   ├── NotFound               404 not_found
    │   ├── Unauthorized           401 unauthorized (sign in, or send a bearer token)
    │   └── Forbidden              403 forbidden, protected_mode, cross_origin
    ├── AtCapacity                 503 at_capacity (retryable, with Retry-After)
    ├── TooManyStreams             429 too_many_streams (one account's share is taken; Retry-After)
    ├── TooManyRequests            429 import_running (one import at a time per account; Retry-After)
    ├── Busy                       503 import_busy, sign_in_busy (the process does as many at once as
    │                              it may; Retry-After)
    ├── CoordinationUnavailable    503 coordination_unavailable (several processes: Redis
    │                              unreachable; Retry-After)
    ├── Interrupted                409 superseded, stopped, deleted; 503 shutdown (an answer cut short)
    ├── StoreError                 500 store_error (the database refused a write)
    │   └── DatabaseUnavailable    503 database_unavailable (retryable: PostgreSQL is down)
    └── UpstreamError              502, the model side failed; ends a stream as failed
        ├── UpstreamUnavailable    upstream_unavailable (retryable: start Ollama)
        ├── ModelNotFound          model_not_found
        ├── UpstreamUnauthorized   upstream_unauthorized (the server refused the API key)
        ├── UpstreamHTTPError      upstream_http_error
        ├── UpstreamStreamError    upstream_error (an error line mid-answer)
        ├── UpstreamProtocolError  upstream_bad_response
        ├── UpstreamDisconnected   upstream_disconnected
        └── UpstreamTimeout        504, ends a stream as timeout (retryable)
"""

from __future__ import annotations


class JarvisError(Exception):
    """Base of every error Jarvis reports to a client.

    A subclass names what tells it apart in its class line (``http_status``, ``code``, the
    terminal ``status``, ``retry_after_s``, ``public_message``); the rest it inherits."""

    http_status = 500
    code = "internal_error"
    status = "failed"  # the terminal status of a stream this error ends
    # what a client reads instead of the message, where the message is for the server log alone
    public_message: str | None = None
    # a retryable error's class sets ``retry_after_s`` (seconds, sent as Retry-After); the others
    # have no such attribute, which is how the web layer tells them apart

    def __init_subclass__(cls, **attributes):
        super().__init_subclass__()
        for name, value in attributes.items():
            if name not in _CLASS_ATTRIBUTES:
                raise TypeError(f"{cls.__name__}: {name} is not an attribute of an error")
            setattr(cls, name, value)

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.public_message or self.message}


_CLASS_ATTRIBUTES = frozenset({"http_status", "code", "status", "retry_after_s", "public_message"})


class RequestError(JarvisError, http_status=400, code="bad_request"):
    """The request is wrong; retrying it unchanged will not help."""


class BadRequest(RequestError):
    """The request is malformed."""


class Unsupported(BadRequest, code="unsupported"):
    """A field the chosen backend or model cannot honour: refused, never silently dropped.

    ``field`` names it in the core's terms ("tools", "images", "think", "format",
    "keep_alive", "options.<key>"); each dialect names it in its own."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class UnsupportedMediaType(RequestError, http_status=415, code="unsupported_media_type"):
    """The body is not of the type the route reads."""


class PromptTooLarge(RequestError, http_status=413, code="prompt_too_large"):
    """The body or the prompt is larger than the configured limit."""


class NotFound(RequestError, http_status=404, code="not_found"):
    """No such thing (session, message, image, user, token) for this caller."""


class Unauthorized(RequestError, http_status=401, code="unauthorized"):
    """Sign in, or send a bearer token."""


class Forbidden(RequestError, http_status=403, code="forbidden"):
    """Known but not allowed: protected mode, a cross-origin write."""


class AtCapacity(JarvisError, http_status=503, code="at_capacity", retry_after_s=2):
    """Every stream slot is taken; retry after ``retry_after_s`` seconds."""


class TooManyStreams(JarvisError, http_status=429, code="too_many_streams", retry_after_s=2):
    """One account holds as many live streams as it may; retry when one ends."""


class TooManyRequests(JarvisError, http_status=429, code="too_many_requests", retry_after_s=1):
    """The caller runs such a request already (an import); retry when it ends."""


class Busy(JarvisError, http_status=503, code="busy", retry_after_s=1):
    """The process does as much of this work at once as it may (imports, password checks), each
    bounded in memory and time; retry after ``retry_after_s`` seconds."""


class CoordinationUnavailable(JarvisError, http_status=503, code="coordination_unavailable", retry_after_s=2):
    """Redis, which several Jarvis processes share, cannot be reached, or the session's answer in
    another process did not end in time; retry after ``retry_after_s`` seconds."""


class Interrupted(JarvisError, http_status=409, code="stopped"):
    """An answer ended by a newer prompt in its session, a stop or a shutdown, not by the model.

    Only the compatible APIs raise it: their clients know no such ending, and a cut answer must
    not look finished. ``code`` is the reason; a shutdown is retryable elsewhere, so 503.
    """

    def __init__(self, reason: str):
        super().__init__(f"the answer was cut short: {reason}", code=reason)
        if reason == "shutdown":
            self.http_status = 503


class StoreError(
    JarvisError,
    http_status=500,
    code="store_error",
    # the message names the file: it is for the server log, not for clients
    public_message="the history database failed; the server log has the details",
):
    """The history database refused a read or write (full disk, read-only file)."""


class DatabaseUnavailable(
    StoreError,
    http_status=503,
    code="database_unavailable",
    retry_after_s=2,
    public_message="the history database is unavailable; try again shortly",
):
    """The database server cannot be reached; retry once it is back."""


class UpstreamError(JarvisError, http_status=502, code="upstream_error"):
    """The model side failed. Raised only by the upstream modules."""


class UpstreamUnavailable(UpstreamError, code="upstream_unavailable"):
    """No connection to the model server; retryable once it runs."""


class ModelNotFound(UpstreamError, code="model_not_found"):
    """The model server does not have the model asked for."""


class UpstreamUnauthorized(UpstreamError, code="upstream_unauthorized"):
    """The model server refused the API key; retrying will not help until the key is fixed."""


class UpstreamHTTPError(UpstreamError, code="upstream_http_error"):
    """The model server answered with an HTTP error status."""


class UpstreamStreamError(UpstreamError, code="upstream_error"):
    """The model server reported an error in the middle of an answer."""


class UpstreamProtocolError(UpstreamError, code="upstream_bad_response"):
    """The model server sent something that is not its protocol."""


class UpstreamDisconnected(UpstreamError, code="upstream_disconnected"):
    """The model server closed the connection before the answer was done."""


class UpstreamTimeout(UpstreamError, http_status=504, code="upstream_timeout", status="timeout"):
    """The model server was silent for longer than a configured timeout; retryable."""
