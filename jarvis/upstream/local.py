"""The embedded model: llama-cpp-python running a GGUF file in this process.

One llama context can run one generation at a time, so the model sits in a
single slot (``slot.py``); ``decode.py`` runs an answer on it, and this module says
what the backend serves and refuses. The request holding it generates in its own (the
caller's worker) thread; others wait in a bounded queue and say so by yielding
``Progress("queued")``; the holder says when it loads the model (``gguf.py``)
and how many tokens of prompt it reads, once the prompt fits the window
(``fit.py``).

Cancellation checkpoints:

- the queue wait: every wait is bounded, and the cancel callback takes the
  ticket out of the queue and wakes it;
- inside ``llama_decode`` (prompt processing and each token): llama.cpp polls
  our abort callback between graph nodes, and the cancel callback raises the
  flag it reads, so the decode returns within milliseconds;
- between tokens: the cancel flag.

The same abort callback enforces the deadlines, so a decode past one returns
too: the first-token deadline covers the queue, loading the model and reading
the prompt; the idle deadline each gap between tokens; the total the answer.

The model is loaded on first use, by the request holding the slot, so loading
is serialised like generation and start-up stays cheap.

``count_tokens`` uses a vocabulary-only copy of the GGUF (``Counter``: no weights, ~90 ms to
load) and never the slot nor the answer's llama object: it delays no answer nor Stop.

An answer asked for in a format, and a tool call ``tool_choice`` forces, is
held to a grammar (``grammar.py``) as each token is sampled, between decodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from ..cancel import CancelScope
from ..config import Config
from ..conversation import call_schema, forced_tools
from ..errors import ModelNotFound, Unsupported, UpstreamUnavailable
from . import Chat, Embedded, Item, forced, grammar, refuse_missing
from .counter import Counter
from .decode import Decoder
from .embedder import embedder_for
from .fit import Trim
from .gguf import DEFAULT_MODEL, MODEL_PACKAGE, Model, available, default_name, find_model
from .slot import Deadline, Slot

__all__ = ["DEFAULT_MODEL", "MODEL_PACKAGE", "LocalUpstream", "available", "find_model"]  # the backend's face

# 2048 tokens: prompts are processed at about 200 tokens/s on 2 cores, so a
# bigger window mostly buys longer waits for the first token (and 8192 costs
# another 135 MB of KV cache)
N_CTX = 2048


class LocalUpstream:
    """Streams chat answers from a GGUF model loaded into this process."""

    name = "local"

    def __init__(
        self,
        path: str | None = None,
        *,
        llama=None,
        model_name: str | None = None,
        max_waiting: int = 16,
        n_ctx: int = N_CTX,
        max_answer_tokens: int | None = None,
        first_token_timeout_s: float = 300.0,
        idle_timeout_s: float = 60.0,
        total_timeout_s: float = 900.0,
        on_trim: Callable[[str | None, Trim], None] | None = None,
        embed_model: str = "",
    ):
        """``llama`` is an already built model object (tests pass a stand-in); else ``path`` is loaded."""
        self.default_model = model_name or default_name(path)
        self.n_ctx = n_ctx
        self.max_answer_tokens = max_answer_tokens
        self._slot = Slot(max_waiting)
        self._deadline = Deadline(first_token_timeout_s, idle_timeout_s, total_timeout_s)
        self._model = Model(path, n_ctx, self._should_abort, llama)
        self._decoder = Decoder(
            self._slot, self._deadline, self._model, on_trim, lambda: self.max_answer_tokens
        )
        self._embedder = embedder_for(embed_model, first_token_timeout_s)
        self._counter = Counter(self._model)

    @classmethod
    def from_config(cls, config: Config, **kwargs) -> LocalUpstream:
        """Build from config; nothing is loaded until the first prompt."""
        kwargs.setdefault("max_waiting", config.max_streams)
        kwargs.setdefault("first_token_timeout_s", config.first_token_timeout_s)
        kwargs.setdefault("idle_timeout_s", config.idle_timeout_s)
        kwargs.setdefault("total_timeout_s", config.total_timeout_s)
        kwargs.setdefault("max_answer_tokens", config.local_max_tokens or None)
        kwargs.setdefault("embed_model", config.local_embed_model)
        return cls(find_model(config), **kwargs)

    def stream_chat(self, chat: Chat, cancel: CancelScope, session: str | None = None) -> Iterator[Item]:
        """Yield ``Progress`` (queued, loading, reading), then the answer; stop quietly once cancelled.

        An answer asked for in a format is held to it by a grammar; a call ``tool_choice`` forces
        is asked for as its JSON schema (``forced.py``) and comes out as one ``ToolCall``."""
        if cancel.cancelled:  # checkpoint: stopped before the call
            return
        prepared = forced.prepare(chat)
        self._serves(chat.model)
        raw = self._decoder.stream(prepared, cancel, session)
        try:
            yield from forced.answer(chat, raw)
        finally:
            raw.close()  # the slot is given back now, not when the generator is collected

    def _should_abort(self) -> bool:
        # called by llama.cpp's compute threads many times per decode: keep it cheap
        return self._slot.abort or time.monotonic() > self._deadline.at

    def health(self) -> dict:
        """Say whether a prompt could be answered, without loading the model."""
        loaded = self._model.llama is not None
        info = {"ok": True, "backend": self.name, "model": self.default_model, "loaded": loaded}
        error = self._model.unavailable()
        if self._slot.closed:
            error = UpstreamUnavailable("the local model is shut down")
        if error is not None:
            info.update(ok=False, error=error.to_dict())
        return info

    def _serves(self, model: str | None) -> None:
        if model and model != self.default_model:
            raise ModelNotFound(f"the local backend serves {self.default_model!r}, not {model!r}")

    def models(self) -> list[dict]:
        return [{"name": self.default_model}, *self._embedder.models()]

    def show(self, model: str) -> dict:
        """Its own ``/api/show``: the window Jarvis gives it, under its architecture's name."""
        if model not in {m["name"] for m in self.models()}:
            raise ModelNotFound(f"the local backend serves {self.default_model!r}, not {model!r}")
        llama = self._model.llama
        arch = (llama.metadata.get("general.architecture") if llama is not None else None) or "llama"
        info = {"general.architecture": arch, f"{arch}.context_length": self.n_ctx}
        return {
            "capabilities": sorted(self.capabilities(model)),
            "details": {"format": "gguf"},
            "model_info": info,
        }

    def running(self) -> list[dict]:
        if self._model.llama is None:
            return []
        return [
            {
                "name": self.default_model,
                "model": self.default_model,
                "size": 0,
                "details": {"format": "gguf"},
            }
        ]

    def capabilities(self, model: str) -> frozenset[str]:
        """Only "completion": Ollama's "tools" means the model chooses to call one, which this
        model cannot; a format and a forced call it honours all the same (``check`` says)."""
        return frozenset({"completion"})

    def embed(self, model: str, inputs: list[str], *, cancel=None, **knobs) -> Embedded:
        """With JARVIS_LOCAL_EMBED_MODEL, its vectors (whatever ``model`` names: there is one);
        else a clear refusal: the chat model does not embed."""
        return self._embedder.embed(inputs, **knobs)

    def count_tokens(self, chat: Chat) -> int:
        """The tokens of ``chat``'s whole prompt, rendered as an answer renders it (before any trim
        to the window); refused as an answer would be when the model could not answer it."""
        self._serves(chat.model)
        self.check(chat)
        return self._counter.count(forced.prepare(chat).messages)

    def check(self, chat: Chat) -> None:
        """Text, a format and a forced tool call pass; anything else is refused, named."""
        _refuse_unsupported(chat)
        refuse_missing(forced.prepare(chat), self.capabilities(chat.model), "the embedded model")

    def close(self) -> None:
        """Refuse new prompts, abort the running one, free the model (idempotent).

        A holder frees the model as it leaves; waiting for it here would only spend the
        shutdown deadline on a decode that ignores its abort flag."""
        if self._slot.close():
            self._model.free()
        self._counter.close()
        self._embedder.close()


def _refuse_unsupported(chat: Chat) -> None:
    """Refuse, named, what the embedded model cannot do: images, thinking, other options, a
    tool call it is not forced to make, a format its grammar cannot hold."""
    if chat.images:
        raise Unsupported("images", "the embedded model reads text only: it cannot see images")
    if chat.think:
        raise Unsupported("think", "the embedded model does not think before it answers")
    for key in chat.options.extra:
        raise Unsupported(f"options.{key}", f"the embedded model takes no {key!r} option")
    if chat.keep_alive is not None:
        raise Unsupported("keep_alive", "keep_alive applies to Ollama; the embedded model stays loaded")
    tools = forced_tools(chat)
    if chat.tool_name is not None and chat.tools and not tools:
        raise Unsupported("tool_choice", f"no tool named {chat.tool_name!r} is offered")
    if chat.tools and chat.tool_choice != "none" and not tools:
        raise Unsupported(
            "tools",
            "the embedded model calls a tool only when tool_choice requires one "
            '("required" or a function named)',
        )
    grammar.of(call_schema(tools) if tools else chat.format, "tools" if tools else "format")
