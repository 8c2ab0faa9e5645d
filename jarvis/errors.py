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
    """Base of every error Jarvis reports to a client."""

    http_status = 500
    code = "internal_error"
    status = "failed"  # the terminal status of a stream this error ends

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


class RequestError(JarvisError):
    """The request is wrong; retrying it unchanged will not help."""

    http_status = 400
    code = "bad_request"


class BadRequest(RequestError):
    pass


class Unsupported(BadRequest):
    """A field the chosen backend or model cannot honour: refused, never silently dropped.

    ``field`` names it in the core's terms ("tools", "images", "think", "format",
    "keep_alive", "options.<key>"); each dialect names it in its own."""

    code = "unsupported"

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class UnsupportedMediaType(RequestError):
    http_status = 415
    code = "unsupported_media_type"


class PromptTooLarge(RequestError):
    http_status = 413
    code = "prompt_too_large"


class NotFound(RequestError):
    http_status = 404
    code = "not_found"


class Unauthorized(RequestError):
    http_status = 401
    code = "unauthorized"


class Forbidden(RequestError):
    http_status = 403
    code = "forbidden"


class AtCapacity(JarvisError):
    """Every stream slot is taken; retry after ``retry_after_s`` seconds."""

    http_status = 503
    code = "at_capacity"

    def __init__(self, message: str, *, retry_after_s: int = 2):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyStreams(JarvisError):
    """One account holds as many live streams as it may; retry when one ends."""

    http_status = 429
    code = "too_many_streams"

    def __init__(self, message: str, *, retry_after_s: int = 2):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyRequests(JarvisError):
    """The caller runs such a request already (an import); retry when it ends."""

    http_status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int = 1):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Busy(JarvisError):
    """The process does as much of this work at once as it may (imports, password checks), each
    bounded in memory and time; retry after ``retry_after_s`` seconds."""

    http_status = 503
    code = "busy"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int = 1):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class CoordinationUnavailable(JarvisError):
    """Redis, which several Jarvis processes share, cannot be reached, or the session's answer in
    another process did not end in time; retry after ``retry_after_s`` seconds."""

    http_status = 503
    code = "coordination_unavailable"
    retry_after_s = 2


class Interrupted(JarvisError):
    """An answer ended by a newer prompt in its session, a stop or a shutdown, not by the model.

    Only the compatible APIs raise it: their clients know no such ending, and a cut answer must
    not look finished. ``code`` is the reason; a shutdown is retryable elsewhere, so 503.
    """

    http_status = 409
    code = "stopped"

    def __init__(self, reason: str):
        super().__init__(f"the answer was cut short: {reason}", code=reason)
        if reason == "shutdown":
            self.http_status = 503


class StoreError(JarvisError):
    """The history database refused a read or write (full disk, read-only file)."""

    http_status = 500
    code = "store_error"

    def to_dict(self) -> dict:
        # the message names the file: it is for the server log, not for clients
        return {"code": self.code, "message": "the history database failed; the server log has the details"}


class DatabaseUnavailable(StoreError):
    """The database server cannot be reached; retry once it is back."""

    http_status = 503
    code = "database_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 2):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict:
        return {"code": self.code, "message": "the history database is unavailable; try again shortly"}


class UpstreamError(JarvisError):
    """The model side failed. Raised only by the upstream modules."""

    http_status = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    """No connection to the model server; retryable once it runs."""

    code = "upstream_unavailable"


class ModelNotFound(UpstreamError):
    code = "model_not_found"


class UpstreamUnauthorized(UpstreamError):
    """The model server refused the API key; retrying will not help until the key is fixed."""

    code = "upstream_unauthorized"


class UpstreamHTTPError(UpstreamError):
    code = "upstream_http_error"


class UpstreamStreamError(UpstreamError):
    """The model server reported an error in the middle of an answer."""

    code = "upstream_error"


class UpstreamProtocolError(UpstreamError):
    """The model server sent something that is not its protocol."""

    code = "upstream_bad_response"


class UpstreamDisconnected(UpstreamError):
    """The model server closed the connection before the answer was done."""

    code = "upstream_disconnected"


class UpstreamTimeout(UpstreamError):
    """The model server was silent for longer than a configured timeout; retryable."""

    http_status = 504
    code = "upstream_timeout"
    status = "timeout"
