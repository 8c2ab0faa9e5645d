"""Counting a prompt's tokens with the embedded model, beside its answers and never in their way.

A vocabulary-only copy of the model's GGUF (the tokenizer and the chat template, no weights:
about 90 ms to load) renders and tokenizes the conversation as an answer would; it holds no
slot and no model object an answer uses, so a count never delays an answer or a Stop.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..errors import AtCapacity, UpstreamUnavailable
from . import Message
from .fit import _tokenize
from .gguf import Model, _route_llama_logs

COUNT_WAIT_S = 5.0  # longest a count waits for the counts before it (each takes milliseconds)


class Counter:
    """Counts with a vocabulary-only copy of the model's GGUF, loaded by the first count; one count at
    a time (milliseconds each); the last out after ``close`` frees it. A stand-in counts itself."""

    def __init__(self, model: Model):
        self._model = model  # the answering model: its file, or the stand-in
        self._vocab: Model | None = None
        self._lock = threading.Lock()  # held while loading or tokenizing, and to free
        self._closed = False

    def count(self, messages: Sequence[Message]) -> int:
        if not self._lock.acquire(timeout=COUNT_WAIT_S):
            raise AtCapacity(f"other counts held the local model's tokenizer for {COUNT_WAIT_S:g} s")
        try:
            if self._closed:
                raise UpstreamUnavailable("the local model is shut down")
            vocab = self._vocab or self._load()
            return len(_tokenize(vocab.llama, vocab.template.render(messages)))
        finally:
            self._lock.release()
            if self._closed:  # close() found the tokenizer in use: the last one out frees it
                self._free()

    def _load(self) -> Model:
        if self._model.path is None and self._model.llama is not None:
            self._vocab = self._model
            return self._vocab
        error = self._model.unavailable() if self._model.llama is None else None
        if error is not None:
            raise error
        path = self._model.path
        try:
            import llama_cpp

            _route_llama_logs(llama_cpp)
            llama = llama_cpp.Llama(path, vocab_only=True, verbose=False)
        except (ImportError, ValueError, RuntimeError, OSError) as e:
            raise UpstreamUnavailable(f"cannot read the local model's vocabulary in {path}: {e}") from e
        self._vocab = Model(path, 0, lambda: False, llama)
        return self._vocab

    def close(self) -> None:
        """Refuse new counts; free the vocabulary now unless a count holds it (it frees it then)."""
        self._closed = True
        self._free()

    def _free(self) -> None:
        if not self._lock.acquire(blocking=False):
            return
        try:
            vocab, self._vocab = self._vocab, None
            if vocab is not None and vocab is not self._model:
                vocab.free()
        finally:
            self._lock.release()
