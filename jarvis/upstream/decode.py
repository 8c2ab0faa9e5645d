"""One answer of the embedded model: its turn in the slot, the model loaded, the prompt fitted
to the window, the tokens decoded under the deadlines.

``LocalUpstream`` (``local.py``) owns the slot, the deadlines and the model and says what the
backend serves; the ``Decoder`` runs an answer on them. Its checkpoints are named in ``local.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from ..cancel import CancelScope
from ..errors import Unsupported, UpstreamError, UpstreamStreamError, UpstreamUnavailable
from . import Chat, Done, Item, Meta, Options, Progress, grammar
from .fit import Trim, fitted
from .gguf import Model
from .slot import Deadline, Slot, Ticket

TEMPERATURE = 0.2  # SmolLM2's recommended sampling
TOP_P = 0.9


class Decoder:
    """Runs one answer at a time on the embedded model; the others wait their turn in the slot."""

    def __init__(
        self,
        slot: Slot,
        deadline: Deadline,
        model: Model,
        on_trim: Callable[[str | None, Trim], None] | None,
        answer_limit: Callable[[], int | None],
    ):
        """``answer_limit`` reads the longest answer asked for by default as each answer starts."""
        self._slot = slot
        self._deadline = deadline
        self._model = model  # its n_ctx is the window
        self.on_trim = on_trim
        self._answer_limit = answer_limit

    def stream(self, chat: Chat, cancel: CancelScope, session: str | None) -> Iterator[Item]:
        """The answer to ``chat`` (already prepared for the model: ``forced.prepare``)."""
        if not chat.messages:
            raise UpstreamStreamError("there is no message to answer")
        try:
            held = grammar.of(chat.format)  # before the queue: a schema it cannot hold waits for nothing
        except Unsupported as e:  # check() refuses it first; a caller that skipped it gets this
            raise UpstreamStreamError(e.message) from e
        started = time.monotonic()
        ticket = self._slot.join(session, cancel)
        unregister = cancel.on_cancel(lambda: self._slot.on_cancel(ticket))
        try:
            yield from self._answer(ticket, chat, held, cancel, session, started)
        finally:
            unregister()
            if self._slot.leave(ticket):
                self._model.free()

    def _answer(
        self,
        ticket: Ticket,
        chat: Chat,
        held,
        cancel: CancelScope,
        session: str | None,
        started: float,
    ) -> Iterator[str | Progress | Meta | Done]:
        first_token_s = self._deadline.first_token_s
        yield from self._slot.turn(ticket, started + first_token_s, first_token_s)
        if cancel.cancelled:  # checkpoint: left the queue, or cancelled as the model came free
            return
        if ticket.state != "holding" or self._slot.closed:
            raise UpstreamUnavailable("the local model was shut down while the prompt waited")
        # the first-token deadline covers the queue, loading the model and reading the prompt
        self._deadline.start(started)
        try:
            if self._model.llama is None:
                yield Progress("loading")
            llama = self._model.load()
            self._deadline.check()  # a load cannot be aborted: it counts once it returns
            model, check = self._model, self._deadline.check
            tokens = yield from fitted(
                llama, model.template, chat.messages, model.n_ctx, check, self.on_trim, session
            )
            yield from self._generate(llama, tokens, cancel, chat.options, held)
        finally:
            self._deadline.clear()

    def _generate(
        self, llama, tokens: list[int], cancel: CancelScope, options: Options, held
    ) -> Iterator[str | Done]:
        max_tokens = self._model.n_ctx - len(tokens)
        limit = options.max_tokens or self._answer_limit()  # the request's, else the default
        if limit:
            max_tokens = min(max_tokens, limit)
        sampling = _sampling(options)
        if held is not None:
            sampling["grammar"] = held  # checked as each token is sampled, between decodes
        chunks = llama.create_completion(tokens, max_tokens=max_tokens, stream=True, **sampling)
        try:
            yield from _answer_of(chunks, cancel, self._deadline, len(tokens))
        except (RuntimeError, ValueError) as e:
            # our abort (cancel or a deadline): llama.cpp dropped the half-done batch and
            # llama-cpp-python never counted it, so the cached prefix stays valid
            if cancel.cancelled:
                return
            raise _failure(llama, e, self._deadline, self._slot) from e
        finally:
            chunks.close()


def _answer_of(chunks, cancel: CancelScope, deadline: Deadline, prompt_tokens: int) -> Iterator[str | Done]:
    """The text of llama-cpp-python's completion chunks, then ``Done``; each text restarts the idle clock."""
    produced = 0
    for chunk in chunks:  # each step is one llama_decode, which the abort flag breaks
        if cancel.cancelled:  # checkpoint: between tokens
            return
        choice = chunk["choices"][0]
        text = choice["text"]
        if text:
            produced += 1
            yield text
            deadline.token()
        if choice.get("finish_reason"):
            yield Done("length" if choice["finish_reason"] == "length" else "stop", prompt_tokens, produced)
        deadline.check()  # checkpoint: a stand-in or a step that ignores the abort flag


def _failure(llama, e: Exception, deadline: Deadline, slot: Slot) -> UpstreamError:
    """What a decode that raised means: a deadline passed, a shutdown, or a real failure."""
    if deadline.passed():
        return deadline.error()
    llama.reset()  # a real failure: trust nothing the context holds
    if slot.closed:
        return UpstreamUnavailable("the local model was shut down mid-answer")
    return UpstreamStreamError(f"the local model failed: {e}")


def _sampling(options: Options) -> dict:
    """llama-cpp-python's sampling arguments: the request's, else SmolLM2's recommended ones."""
    sampling = {
        "temperature": TEMPERATURE if options.temperature is None else options.temperature,
        "top_p": TOP_P if options.top_p is None else options.top_p,
    }
    if options.stop:
        sampling["stop"] = list(options.stop)
    if options.seed is not None:
        sampling["seed"] = options.seed
    for name in ("frequency_penalty", "presence_penalty"):
        if (value := getattr(options, name)) is not None:
            sampling[name] = value
    return sampling
