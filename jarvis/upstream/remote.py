"""A model server reached over HTTP: the one skeleton of a streamed chat call.

Ollama and an OpenAI-compatible server differ in two things only: how a chat
request is built (``_request``) and how the lines of the answer are read
(``_reader``), plus what an HTTP status means (``_http_error``). The rest is
the same and lives here: the checkpoint before the call, the ``WAITING``
progress, the request under the stream's ``CancelScope`` and deadlines, the
idle clock restarted once per receive that brings text, and the end of a body
that stopped before the answer was done. The connection and its errors are
``http.py``'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Protocol

from ..cancel import CancelScope
from ..config import Config
from ..errors import Interrupted, UpstreamError, UpstreamProtocolError
from . import WAITING, Chat, Done, Item, http
from .pool import Pool

JSON_ANSWER_LIMIT = 256 * 1024 * 1024  # a batch of embeddings: texts' worth of numbers, bounded
PROBE_READ_S = 2.0  # a health check or model list is small: it answers quickly or not at all


class Reader(Protocol):
    """Reads one streamed answer: its text (never ""), thinking and tool calls and, last, ``Done``
    when the server says so."""

    def read(self, lines: list[bytes]) -> Iterable[Item]:
        """What the lines of one receive say; the call ends at the first ``Done``."""
        ...

    def end(self) -> Iterable[Item]:
        """What the body's end says: the rest of the answer, or an ``UpstreamError``."""
        ...

    def gathered(self) -> bool:
        """Whether the last lines brought part of an item still being put together (a tool call
        streamed in pieces); True once per such receive."""
        ...


class Remote:
    """Streams chat answers from one model server; a subclass names its request and its reader."""

    name: str
    url_field: str  # the Config field that holds the server's URL
    chat_path: str  # where chats are posted, after the URL
    completion_path: str  # where a raw prompt (Chat.completion) is posted
    peer_name: str  # the server, as error messages name it
    hint: str  # how to start it, or where to point Jarvis instead

    def __init__(self, config: Config):
        self.url = getattr(config, self.url_field).rstrip("/")
        self.default_model = config.model
        self.config = config
        self.peer = http.Peer(self.peer_name, self.url, self.hint)
        self.pool = Pool()  # kept connections for embeddings; a chat stream owns its own

    def stream_chat(
        self, chat: Chat, cancel: CancelScope, session: str | None = None, first_token_by: float | None = None
    ) -> Iterator[Item]:
        """Yield ``WAITING``, the answer as the server streams it, ``Done``; stop quietly once cancelled."""
        if cancel.cancelled:  # checkpoint: superseded or stopped before the call
            return
        yield from self._stream(chat, cancel, first_token_by)

    def _stream(self, chat: Chat, cancel: CancelScope, first_token_by: float | None) -> Iterator[Item]:
        model = chat.model
        body, headers = self._request(chat)
        # all the server tells before its first token (loading, reading the prompt) is silence
        yield WAITING
        with http.request(
            "POST",
            self.url + self._path(chat),
            cancel=cancel,
            timeouts=http.Timeouts.of(self.config, first_token_by),
            peer=self.peer,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **headers},
        ) as response:
            if cancel.cancelled:
                return
            if response.status != 200:
                raise self._http_error(response, model)
            reader = self._reader()
            # a fast server sends many lines a receive: they come as one group
            for lines in response.line_groups(self.config.max_line_bytes):
                fresh = True
                for item in reader.read(lines):
                    if isinstance(item, Done):
                        yield item
                        return
                    if fresh:  # text restarts the idle clock; once per receive is enough
                        response.progress()
                        fresh = False
                    yield item
                if fresh and reader.gathered():  # the pieces of a tool call are news too
                    response.progress()
            if not cancel.cancelled:
                yield from reader.end()

    def _path(self, chat: Chat) -> str:
        """Where the request goes: the chat path, or the completion path for a raw prompt."""
        return self.completion_path if chat.completion else self.chat_path

    def _request(self, chat: Chat) -> tuple[dict, dict]:
        """The chat request's JSON body and its headers beyond the content type."""
        raise NotImplementedError

    def _reader(self) -> Reader:
        raise NotImplementedError

    def _http_error(self, response: http.Response, model: str) -> UpstreamError:
        raise NotImplementedError

    def _get(
        self, path: str, not_object: str, headers: dict | None = None, on_error=None, post: dict | None = None
    ) -> dict:
        """A small JSON object (a version, a model list); ``not_object`` says what else came."""
        cfg = self.config
        timeouts = http.Timeouts(cfg.connect_timeout_s, PROBE_READ_S, PROBE_READ_S, PROBE_READ_S + 1)
        found = http.get_json(
            self.url + path, timeouts=timeouts, peer=self.peer, headers=headers, on_error=on_error, post=post
        )
        if not isinstance(found, dict):
            raise UpstreamProtocolError(not_object)
        return found

    def _post_json(
        self, path: str, body: dict, headers: dict, cancel: CancelScope | None, on_error, parse=json.loads
    ) -> dict:
        """POST ``body`` and read the whole JSON object answered (embeddings), within the config's
        deadlines (the idle clock restarts with each receive), on a kept connection when there is
        one; ``on_error(response)`` names a status's error, ``parse(bytes)`` reads the answer (raising
        ``ValueError``). A cancel ends it with ``Interrupted``."""
        cancel = cancel or CancelScope()
        data = bytearray()
        with http.request(
            "POST",
            self.url + path,
            cancel=cancel,
            timeouts=http.Timeouts.of(self.config),
            peer=self.peer,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **headers},
            pool=self.pool,
        ) as response:
            if not cancel.cancelled and response.status != 200:
                raise on_error(response)
            for more in response.chunks():
                response.progress()
                data += more
                if len(data) > JSON_ANSWER_LIMIT:
                    raise UpstreamProtocolError(f"{self.peer.name} sent more than {JSON_ANSWER_LIMIT} bytes")
        if cancel.cancelled:
            raise Interrupted("cancelled")
        try:
            found = parse(bytes(data))
        except ValueError:
            raise UpstreamProtocolError(
                f"{self.peer.name} sent something that is not JSON for {path}"
            ) from None
        if not isinstance(found, dict):
            raise UpstreamProtocolError(
                f"{self.peer.name} sent something that is not a JSON object for {path}"
            )
        return found

    def close(self) -> None:
        """Close the kept connections and break the ones embeddings use now (streams own theirs)."""
        self.pool.close()


def count(value) -> int | None:
    """A token count as the server gave it, when it is one."""
    return value if isinstance(value, int) and value >= 0 else None
