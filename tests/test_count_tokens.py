"""Anthropic's ``POST /v1/messages/count_tokens`` where the backend can count: the embedded model.

The embedded model counts with a vocabulary-only copy of its GGUF (its tokenizer and chat
template, no weights): a count never takes the model's slot, never loads the weights and never
touches the llama object an answer decodes with. Ollama has no route that counts, so it refuses.
"""

from __future__ import annotations

import threading
import time

import anthropic
import pytest

from jarvis.cancel import CancelScope
from jarvis.conversation import Chat
from jarvis.errors import ModelNotFound, Unsupported, UpstreamUnavailable
from jarvis.upstream import Progress, local
from jarvis.upstream.local import LocalUpstream
from tests.conftest import wait_for
from tests.test_local import FakeLlama, fake_abort  # noqa: F401  (a fixture)

pytestmark = pytest.mark.timeout(15)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "Hi!"},
    {"role": "user", "content": "What is 2 + 2?"},
]


@pytest.fixture
def gguf_file(tmp_path, monkeypatch):
    """A model file whose every load is a stand-in, recorded with its arguments."""
    import llama_cpp

    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    loads = []

    def load(*args, **kwargs):
        loads.append((kwargs, FakeLlama(hold=not kwargs.get("vocab_only"))))
        return loads[-1][1]

    monkeypatch.setattr(llama_cpp, "Llama", load)
    return str(path), loads


def reading(upstream: LocalUpstream, chat: Chat) -> int:
    """The tokens an answer to ``chat`` says it reads."""
    for item in upstream.stream_chat(chat, CancelScope()):
        if isinstance(item, Progress) and item.state == "reading":
            return item.tokens
    raise AssertionError("the answer never said how many tokens it reads")


def test_the_count_is_the_rendered_prompts_tokens(fake_abort):  # noqa: F811
    upstream = LocalUpstream(llama=FakeLlama(), model_name="fake")
    chat = Chat(model="fake", messages=CONVERSATION)
    counted = upstream.count_tokens(chat)
    assert counted == reading(upstream, chat) == len("<system>Be brief.<user>hello<assistant>Hi!"
                                                     "<user>What is 2 + 2?<assistant>")  # fmt: skip


def test_a_count_loads_only_the_vocabulary_and_never_takes_the_slot(fake_abort, gguf_file):  # noqa: F811
    path, loads = gguf_file
    upstream = LocalUpstream(path, model_name="fake")
    chat = Chat(model="fake", messages=CONVERSATION)
    counted = upstream.count_tokens(chat)
    assert [kwargs.get("vocab_only") for kwargs, _ in loads] == [True]
    assert upstream._model.llama is None  # the weights stay unloaded until a prompt needs them
    # a count beside an answer that holds the model in a long decode answers at once
    answer = upstream.stream_chat(chat, CancelScope())
    worker = threading.Thread(target=lambda: list(answer), daemon=True)
    worker.start()
    wait_for(lambda: len(loads) == 2 and loads[1][1].decoding.is_set())
    began = time.monotonic()
    assert upstream.count_tokens(chat) == counted == len(loads[1][1].prompts[0])
    assert time.monotonic() - began < 0.5
    loads[1][1].proceed.set()
    worker.join(5)
    assert not worker.is_alive()
    upstream.close()
    assert all(fake.closed for _, fake in loads)
    with pytest.raises(UpstreamUnavailable):
        upstream.count_tokens(chat)


def test_a_count_refuses_what_the_model_could_not_answer(fake_abort):  # noqa: F811
    upstream = LocalUpstream(llama=FakeLlama(), model_name="fake")
    with pytest.raises(ModelNotFound):
        upstream.count_tokens(Chat(model="other", messages=CONVERSATION))
    with pytest.raises(Unsupported):
        upstream.count_tokens(Chat(model="fake", messages=CONVERSATION, think=True))


def test_a_missing_model_file_cannot_count(tmp_path):
    upstream = LocalUpstream(str(tmp_path / "absent.gguf"), model_name="fake")
    with pytest.raises(UpstreamUnavailable):
        upstream.count_tokens(Chat(model="fake", messages=CONVERSATION))


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not local.available(), reason="needs llama-cpp-python and the embedded model")
def test_the_anthropic_client_counts_what_the_embedded_model_reads(make_served):
    served = make_served(backend="local", local_max_tokens=1)
    client = anthropic.Anthropic(base_url=served.url, api_key=served.token, max_retries=0, timeout=60)
    model = served.app.extensions["jarvis"].upstream.default_model
    kwargs = {"model": model, "system": "Be brief.", "messages": CONVERSATION[1:]}
    counted = client.messages.count_tokens(**kwargs)
    assert counted.input_tokens > 10
    message = client.messages.create(max_tokens=1, **kwargs)
    assert counted.input_tokens == message.usage.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=CONVERSATION[1:])
    client.close()


def test_ollama_cannot_count_and_says_so_in_anthropics_shape(served):
    client = anthropic.Anthropic(base_url=served.url, api_key=served.token, max_retries=0, timeout=5)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.count_tokens(model="tiny", messages=CONVERSATION[1:])
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error" and "Ollama has no route that counts" in error["message"]
    assert "count" in error["message"] and served.fake.chat_calls() == []
    client.close()


def test_several_hosts_count_with_the_host_that_has_the_model(monkeypatch):
    from jarvis.upstream.hosts import Hosts, Router
    from jarvis.upstream.ollama import OllamaUpstream

    class Counting:
        def count_tokens(self, chat):
            return 7

    router = object.__new__(Hosts)  # no probes: only which host counts is under test
    router._router = object.__new__(Router)
    first = {"counts": Counting(), "ollama": object.__new__(OllamaUpstream)}
    monkeypatch.setattr(Router, "first", lambda self, model: first[model])
    assert router.count_tokens(Chat(model="counts", messages=CONVERSATION)) == 7
    assert router.count_tokens(Chat(model="ollama", messages=CONVERSATION)) is None
