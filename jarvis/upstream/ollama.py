"""Ollama over HTTP: ``POST /api/chat`` streamed as NDJSON with requests.

A flag checked between chunks is never seen while Ollama is silent (a model
loading, a stalled answer): the worker sits in ``recv``. So every stream gets
its own connection, and the moment its socket exists we register a cancel
callback that shuts it down from the cancelling thread; the blocked ``recv``
returns at once and Ollama sees the connection close. ``requests`` exceptions
are translated into Jarvis errors here and nowhere else.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Sequence

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..cancel import CancelScope
from ..config import Config
from ..errors import (
    ModelNotFound,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from . import Done, Message, Options

READ_CHUNK = 65536
ERROR_BODY_LIMIT = 65536


class OllamaUpstream:
    """Streams chat answers from one Ollama server."""

    name = "ollama"

    def __init__(self, config: Config):
        self.url = config.ollama_url.rstrip("/")
        self.default_model = config.model
        self.config = config

    def stream_chat(
        self,
        messages: Sequence[Message],
        model: str,
        cancel: CancelScope,
        session: str | None = None,
        options: Options | None = None,
    ) -> Iterator[str | Done]:
        """Yield answer text as Ollama streams it, then ``Done``; stop quietly once cancelled."""
        if cancel.cancelled:  # checkpoint: superseded or stopped before the call
            return
        cfg = self.config
        adapter = _StreamAdapter()
        unregister = []
        sockets = []

        phase = "connect"

        def on_socket(sock: socket.socket) -> None:
            nonlocal phase
            phase = "first_token"  # connected: a failure from now on is not "unreachable"
            sockets.append(sock)
            # close first: a blocked recv never sees the flag
            unregister.append(cancel.on_cancel(lambda: _shutdown(sock)))

        body = {"model": model, "messages": list(messages), "stream": True}
        if options is not None and (sampling := _ollama_options(options)):
            body["options"] = sampling
        request = requests.Request("POST", self.url + "/api/chat", json=body).prepare()
        adapter.watch(request, on_socket)
        response = None
        try:
            response = adapter.send(
                request, stream=True, timeout=(cfg.connect_timeout_s, cfg.first_token_timeout_s)
            )
            phase = "first_token"
            if cancel.cancelled:
                return
            if response.status_code != 200:
                raise self._http_error(response, model)
            deadline = time.monotonic() + cfg.total_timeout_s
            for text in _read_answer(response.raw, cancel, cfg.max_line_bytes, deadline, cfg.total_timeout_s):
                if phase == "first_token":
                    phase = "idle"
                    for sock in sockets:
                        sock.settimeout(cfg.idle_timeout_s)
                yield text
        except UpstreamError:
            if not cancel.cancelled:
                raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            if not cancel.cancelled:  # an error we caused by closing is no error
                raise self._translate(e, phase) from e
        finally:
            for undo in unregister:
                undo()
            if response is not None:
                response.close()
            adapter.close()

    def _translate(self, e: Exception, phase: str) -> UpstreamError:
        cfg = self.config
        if isinstance(e, requests.ConnectTimeout):
            return UpstreamTimeout(
                f"Ollama at {self.url} did not accept a connection within {cfg.connect_timeout_s:g} s",
                code="connect_timeout",
            )
        if isinstance(e, requests.ConnectionError) and phase == "connect" and not _is_read_timeout(e):
            return UpstreamUnavailable(
                f"Ollama is not reachable at {self.url}. Start it with `ollama serve`, "
                "or set JARVIS_OLLAMA_URL to where it runs."
            )
        if _is_read_timeout(e):
            if phase in ("connect", "first_token"):
                return UpstreamTimeout(
                    f"no answer from the model within {cfg.first_token_timeout_s:g} s",
                    code="first_token_timeout",
                )
            return UpstreamTimeout(
                f"the model was silent for more than {cfg.idle_timeout_s:g} s", code="idle_timeout"
            )
        return UpstreamDisconnected(f"the connection to Ollama broke: {type(e).__name__}")

    def _http_error(self, response: requests.Response, model: str) -> UpstreamError:
        detail = _error_text(response)
        if response.status_code == 404:
            return ModelNotFound(
                f"Model {model!r} is not available in Ollama at {self.url}. "
                f"Pull it with `ollama pull {model}`."
            )
        return UpstreamHTTPError(f"Ollama answered HTTP {response.status_code}: {detail}")

    def _get(self, path: str) -> dict:
        try:
            r = requests.get(self.url + path, timeout=(self.config.connect_timeout_s, 2.0))
            r.raise_for_status()
            return r.json()
        except requests.HTTPError as e:
            raise UpstreamHTTPError(f"Ollama answered HTTP {e.response.status_code} to {path}") from e
        except ValueError as e:
            raise UpstreamProtocolError(f"Ollama sent something that is not JSON for {path}") from e
        except requests.RequestException as e:
            raise self._translate(e, "connect") from e

    def health(self) -> dict:
        try:
            self._get("/api/version")
        except UpstreamError as e:
            return {"ok": False, "backend": self.name, "model": self.default_model, "error": e.to_dict()}
        return {"ok": True, "backend": self.name, "model": self.default_model}

    def models(self) -> list[dict]:
        return [{"name": m.get("name", "")} for m in self._get("/api/tags").get("models", [])]

    def close(self) -> None:
        """Nothing is shared between streams, so nothing to release."""


def _ollama_options(options: Options) -> dict:
    """Ollama's names for the sampling settings that are set."""
    names = {
        "temperature": options.temperature,
        "top_p": options.top_p,
        "num_predict": options.max_tokens,
        "seed": options.seed,
        "stop": list(options.stop) or None,
    }
    return {k: v for k, v in names.items() if v is not None}


def _read_answer(
    raw: urllib3.HTTPResponse, cancel: CancelScope, max_line: int, deadline: float, total_s: float
) -> Iterator[str | Done]:
    """Parse Ollama's NDJSON body into text chunks, within the line and time limits."""
    pending = b""
    for chunk in raw.stream(READ_CHUNK, decode_content=True):
        if time.monotonic() > deadline:  # bytes that never form an answer still end in time
            raise UpstreamTimeout(f"the answer took longer than {total_s:g} s", code="total_timeout")
        pending += chunk
        if b"\n" not in chunk:
            if len(pending) > max_line:
                raise UpstreamProtocolError(f"Ollama sent a line longer than {max_line} bytes")
            continue
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise UpstreamProtocolError("Ollama sent a line that is not JSON") from None
            if not isinstance(obj, dict):
                raise UpstreamProtocolError("Ollama sent a line that is not a JSON object")
            if obj.get("error"):
                raise UpstreamStreamError(f"Ollama reported an error: {obj['error']}")
            message = obj.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            if text:
                yield text
            if obj.get("done"):
                yield Done(
                    "length" if obj.get("done_reason") == "length" else "stop",
                    _count(obj.get("prompt_eval_count")),
                    _count(obj.get("eval_count")),
                )
                return
        if len(pending) > max_line:
            raise UpstreamProtocolError(f"Ollama sent a line longer than {max_line} bytes")
        if cancel.cancelled:  # checkpoint: between chunks
            return
    if not cancel.cancelled:
        raise UpstreamDisconnected("Ollama ended the answer before it was done")


def _count(value) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def _is_read_timeout(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)):
            return True
        e = e.args[0] if e.args and isinstance(e.args[0], BaseException) else e.__context__
    return False


def _error_text(response: requests.Response) -> str:
    try:
        body = response.raw.read(ERROR_BODY_LIMIT)
        return str(json.loads(body).get("error") or body[:200].decode("utf-8", "replace"))
    except (ValueError, AttributeError, OSError, urllib3.exceptions.HTTPError):
        return "(no detail)"


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the worker: nothing left to break


class _HandsOverSocket:
    """A urllib3 connection that passes its socket to ``on_socket`` once connected."""

    on_socket = None

    def connect(self) -> None:
        super().connect()
        if self.on_socket is not None:
            self.on_socket(self.sock)


class _WatchedConnection(_HandsOverSocket, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_HandsOverSocket, HTTPSConnection):
    pass


class _WatchesSockets:
    """A pool whose new connections report to the pool's ``on_socket``."""

    on_socket = None

    def _new_conn(self):
        conn = super()._new_conn()
        conn.on_socket = self.on_socket
        return conn


class _WatchedPool(_WatchesSockets, HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedHTTPSPool(_WatchesSockets, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _StreamAdapter(HTTPAdapter):
    """A one-stream adapter whose connections hand their socket to a callback."""

    def __init__(self) -> None:
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedHTTPSPool}

    def watch(self, request: requests.PreparedRequest, on_socket) -> None:
        # the same pool send() will use: its key depends on the TLS settings
        self.get_connection_with_tls_context(request, True, None, None).on_socket = on_socket
