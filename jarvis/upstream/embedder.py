"""The embedded backend's embeddings: an embedding GGUF (JARVIS_LOCAL_EMBED_MODEL) in
llama-cpp-python's embedding mode, loaded on first use, one batch at a time.

An embedding decode cannot be aborted, but it is short and bounded by the batch limits; the
wait for the one model is bounded by the first-token timeout, as a prompt's wait is.
"""

from __future__ import annotations

import threading

from .. import log
from ..errors import Unsupported, UpstreamStreamError, UpstreamTimeout, UpstreamUnavailable
from . import Embedded, vectors_of
from .gguf import _threads, default_name

N_CTX = 2048  # the longest text one embedding reads, in tokens (past it llama.cpp refuses the text)


def embedder_for(path: str, wait_s: float) -> Embedder | NoEmbedder:
    """The embedding model at ``path`` (JARVIS_LOCAL_EMBED_MODEL), or none when it is empty."""
    return Embedder(path, wait_s) if path else NoEmbedder()


class NoEmbedder:
    """No embedding model configured: a clear refusal, since the chat model does not embed."""

    def models(self) -> list[dict]:
        return []

    def embed(self, inputs: list[str], **knobs) -> Embedded:
        raise Unsupported(
            "model",
            "the embedded backend has no embedding model: set JARVIS_LOCAL_EMBED_MODEL to the path "
            "of an embedding GGUF, or embed through Ollama or an OpenAI-compatible server",
        )

    def close(self) -> None:
        pass


class Embedder:
    """One embedding model, loaded when first asked, freed by ``close``."""

    def __init__(self, path: str, wait_s: float):
        self.path = path
        self.wait_s = wait_s
        self._lock = threading.Lock()  # one batch at a time: the model has one context
        self._llama = None
        self._closed = False

    def models(self) -> list[dict]:
        return [{"name": default_name(self.path)}]

    def embed(self, inputs: list[str], *, dimensions=None, **knobs) -> Embedded:
        for name, value in {"dimensions": dimensions, **knobs}.items():
            if value is not None:
                raise Unsupported(name, f"the embedded backend takes no {name!r} for embeddings")
        if not self._lock.acquire(timeout=self.wait_s):
            raise UpstreamTimeout(
                f"the embedding model stayed busy for {self.wait_s:g} s", code="first_token_timeout"
            )
        try:
            if self._closed:
                raise UpstreamUnavailable("the embedding model is shut down")
            found = self._model().create_embedding(inputs)
        except (ValueError, RuntimeError) as e:
            raise UpstreamStreamError(f"the embedding model failed: {e}") from e
        finally:
            self._lock.release()
        vectors = vectors_of(
            [_pooled(d.get("embedding")) for d in found.get("data", [])], len(inputs), "the embedding model"
        )
        return Embedded(vectors, (found.get("usage") or {}).get("prompt_tokens"))

    def _model(self):
        if self._llama is None:
            try:
                import llama_cpp

                threads = _threads()
                self._llama = llama_cpp.Llama(
                    self.path,
                    embedding=True,
                    n_ctx=N_CTX,
                    n_threads=threads,
                    n_threads_batch=threads,
                    verbose=False,
                )
            except (ImportError, ValueError, RuntimeError, OSError) as e:
                raise UpstreamUnavailable(f"cannot load the embedding model {self.path}: {e}") from e
            log.event("local_embed_model_loaded", path=self.path)
        return self._llama

    def close(self) -> None:
        """Free the model once no batch runs (bounded: a batch still running frees it never sooner)."""
        if not self._lock.acquire(timeout=self.wait_s):
            return  # a decode that outlives the wait keeps its model; the process is ending anyway
        try:
            self._closed = True
            llama, self._llama = self._llama, None
            if llama is not None:
                llama.close()
        finally:
            self._lock.release()


def _pooled(embedding):
    """One vector for a text: a model without a pooling layer gives one per token, averaged here."""
    if isinstance(embedding, list) and embedding and isinstance(embedding[0], list):
        return [sum(column) / len(embedding) for column in zip(*embedding, strict=True)]
    return embedding
