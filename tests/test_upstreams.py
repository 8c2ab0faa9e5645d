"""The upstream readers against their fakes, without the app: framing, errors, settings.

Each fake is a real HTTP server on loopback; "arrived" means the reader
yielded it while the fake was still holding the rest of the answer back.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time

import pytest
import requests

from jarvis import errors
from jarvis.cancel import CancelScope
from jarvis.config import Config, ConfigError
from jarvis.conversation import Chat
from jarvis.upstream import WAITING, Done, Options, Progress, select_upstream
from jarvis.upstream.openai import OpenAIUpstream
from tests.conftest import HTTP_TIMEOUT, Api, both_upstreams, test_config, wait_for
from tests.fake_ollama import FakeOllama, Script
from tests.fake_openai import FakeOpenAI

FRAMINGS = ["chunked", "length", "close"]
KEY = "sk-test-0123456789abcdef"


def make_upstream(fake, tmp_path, **overrides):
    return select_upstream(Config.from_env({}, test_config(fake, tmp_path, **overrides)))


@pytest.fixture
def upstream(fake, tmp_path):
    return make_upstream(fake, tmp_path)


class Reader:
    """Reads one answer in a thread, so a test can watch items arrive while the fake holds back."""

    def __init__(self, upstream, prompt: str = "hi", model: str = "tiny", options=None, **chat):
        self.cancel = CancelScope()
        self.items: queue.Queue = queue.Queue()
        self.error: Exception | None = None
        self.rest_items: list = []
        self.progress: list[Progress] = []  # what it said before its text, kept apart
        self._ended = False
        messages = [{"role": "user", "content": prompt}]
        chat = Chat(model, messages, options or Options(), **chat)
        self._gen = upstream.stream_chat(chat, self.cancel)
        self._thread = threading.Thread(target=self._run, name="reader")
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._gen:
                if isinstance(item, Progress):
                    self.progress.append(item)
                else:
                    self.items.put(item)
        except Exception as e:  # handed to the test, which asserts on it
            self.error = e
        finally:
            self.items.put(None)

    def take(self, n: int, timeout: float = 2.0) -> list:
        return [self.items.get(timeout=timeout) for _ in range(n)]

    def rest(self, timeout: float = 5.0) -> list:
        """Everything up to the end of the answer (also kept as ``rest_items``)."""
        while not self._ended and (item := self.items.get(timeout=timeout)) is not None:
            self.rest_items.append(item)
        self._ended = True
        return self.rest_items

    def close(self) -> None:
        self.cancel.cancel("stopped")
        self._thread.join(5)
        assert not self._thread.is_alive()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@both_upstreams
@pytest.mark.parametrize("framing", FRAMINGS)
def test_tokens_arrive_as_they_are_sent_in_every_framing(fake: FakeOllama, upstream, framing):
    # with reads that fill 64 KiB, nothing arrives while the fake holds the rest back
    fake.script(Script(tokens=6, stall_after=2, framing=framing))
    with Reader(upstream) as reader:
        assert reader.take(2) == ["tok0 ", "tok1 "]
        call = fake.wait_for_calls(1)[0]
        # the fake counts a token once its write returns, which may come after the reader has it
        wait_for(lambda: call.tokens_sent >= 2, timeout=2, what="the fake to count its second token")
        assert call.tokens_sent == 2  # the fake is stalled: nothing more was sent


@both_upstreams
@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_complete_answer_ends_done_in_every_framing(fake: FakeOllama, upstream, framing):
    fake.script(Script(tokens=3, interval_s=0.01, framing=framing))
    with Reader(upstream) as reader:
        items = reader.rest()
        assert reader.error is None, reader.error
        assert items == ["tok0 ", "tok1 ", "tok2 ", Done("stop", 7, 3)]


@both_upstreams
def test_a_model_server_is_waited_for_in_silence_before_its_first_token(fake, upstream):
    # neither protocol says it loads a model or reads the prompt: "waiting" is all that is known
    fake.script(Script(tokens=2, load_delay_s=0.3))
    with Reader(upstream) as reader:
        wait_for(lambda: reader.progress, timeout=2, what="a progress report")
        assert reader.progress == [WAITING] and reader.items.empty()  # before the fake answered
        assert reader.rest()[:2] == ["tok0 ", "tok1 "] and reader.progress == [WAITING]


@both_upstreams
@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("read_size", [1, 2, 3, 4, 5, 7, 11, 64])
def test_an_answer_split_across_receives_anywhere_reads_the_same(
    fake, upstream, monkeypatch, framing, read_size
):
    # receives of at most read_size bytes put a receive boundary inside every part of the
    # framing, chunk size lines and CRLFs included, as a slow network may
    monkeypatch.setattr("jarvis.upstream.framing.READ_SIZE", read_size)
    fake.script(Script(tokens=12, interval_s=0.001, framing=framing))
    reader = Reader(upstream)
    assert reader.rest() == [f"tok{i} " for i in range(12)] + [Done("stop", 7, 12)]
    assert reader.error is None, reader.error


# server-sent events as servers write them: comments, other fields, CRLF line ends, one
# event's data over two lines, an empty event, usage in its own event, [DONE] (with a stray
# space), then noise
SSE_BODY = (
    b": keep-alive\n\n"
    b"event: message\r\nid: 1\r\n"
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"a"}}]}\r\n\r\n'
    b'data: {"choices":[{"index":0,\ndata: "delta":{"content":"b\\nc"}}]}\n\n'
    b"data:\n\n"
    b'data:{"choices":[{"index":0,"delta":{"content":"d"},"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}\n\n'
    b"data: [DONE] \n\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"after the end"}}]}\n\n'
)


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
@pytest.mark.parametrize("framing", FRAMINGS)
def test_server_sent_events_split_at_every_byte_read_the_same(fake, upstream, framing):
    # every byte its own chunk (or write): each event, line and "data:" is split everywhere
    fake.script(Script(raw=[bytes([b]) for b in SSE_BODY], framing=framing))
    reader = Reader(upstream)
    assert reader.rest() == ["a", "b\nc", "d", Done("stop", 4, 3)]
    assert reader.error is None, reader.error


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
@pytest.mark.parametrize("last", [b"data:", b'data: {"choices":[{"delta":{"content":"z"}}]}'])
def test_a_body_closed_within_its_last_event_still_ends(fake, upstream, last):
    # a close-delimited body may end without the last event's blank line, even in a lone "data:"
    head = b'data: {"choices":[{"delta":{"content":"y"},"finish_reason":"stop"}]}\n\n'
    fake.script(Script(raw=[head, last], framing="close"))
    reader = Reader(upstream)
    assert reader.rest() == (["y", Done("stop")] if last == b"data:" else ["y", "z", Done("stop")])
    assert reader.error is None, reader.error


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
def test_an_event_longer_than_a_receive_reads_whole(fake, upstream):
    text = "x" * 200_000  # several 64 KiB receives for one data line
    fake.script(Script(tokens=[text, "y"]))
    reader = Reader(upstream)
    assert reader.rest() == [text, "y", Done("stop", 7, 2)]


@both_upstreams
def test_sampling_options_reach_the_server_in_its_own_names(fake, upstream):
    fake.script(Script(tokens=1))
    options = Options(temperature=0.2, top_p=0.9, max_tokens=5, stop=("\n\n",), seed=42)
    reader = Reader(upstream, options=options)
    reader.rest()
    body = fake.wait_for_calls(1)[0].body
    if fake.kind == "ollama":
        assert body["options"] == {
            "temperature": 0.2,
            "top_p": 0.9,
            "num_predict": 5,
            "seed": 42,
            "stop": ["\n\n"],
        }
    else:
        sent = {k: body[k] for k in ("temperature", "top_p", "max_tokens", "seed", "stop")}
        assert sent == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 5, "seed": 42, "stop": ["\n\n"]}
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@both_upstreams
def test_an_answer_cut_by_a_limit_ends_as_length_with_its_usage(fake, upstream):
    fake.script(Script(tokens=2, done_reason="length"))
    assert Reader(upstream).rest()[-1] == Done("length", 7, 2)


@both_upstreams
@pytest.mark.parametrize(
    "script, error, code",
    [
        (Script(status=500), errors.UpstreamHTTPError, "upstream_http_error"),
        (Script(tokens=5, error_after=2), errors.UpstreamStreamError, "upstream_error"),
        (Script(tokens=5, drop_after=2), errors.UpstreamDisconnected, "upstream_disconnected"),
        (
            Script(tokens=5, drop_after=2, framing="length"),
            errors.UpstreamDisconnected,
            "upstream_disconnected",
        ),
        (
            Script(tokens=5, drop_after=2, framing="close"),
            errors.UpstreamDisconnected,
            "upstream_disconnected",
        ),
    ],
)
def test_server_failures_become_clear_upstream_errors(fake, upstream, script, error, code):
    fake.script(script)
    reader = Reader(upstream)
    reader.rest()
    assert type(reader.error) is error and reader.error.code == code
    assert "something broke upstream" not in "".join(i for i in reader.rest_items if isinstance(i, str))


@both_upstreams
def test_unknown_model_is_model_not_found(fake, upstream):
    reader = Reader(upstream, model="no-such-model")
    reader.rest()
    assert isinstance(reader.error, errors.ModelNotFound) and "no-such-model" in reader.error.message


@both_upstreams
def test_models_lists_what_the_server_serves(fake, upstream):
    names = [m["name"].split(":")[0] for m in upstream.models()]
    assert names == ["llama3.2", "tiny"] and upstream.health()["ok"] is True


def test_openai_key_is_sent_as_a_bearer_token_and_never_shown(tmp_path, caplog):
    with FakeOpenAI(api_key=KEY) as fake:
        upstream = make_upstream(fake, tmp_path, openai_api_key=KEY)
        fake.script(Script(tokens=2))
        with caplog.at_level(logging.DEBUG):
            assert Reader(upstream).rest()[:2] == ["tok0 ", "tok1 "]
            assert upstream.models() and upstream.health()["ok"]
        assert fake.wait_for_calls(1)[0].headers["authorization"] == f"Bearer {KEY}"
        shown = repr(upstream) + repr(upstream.config) + caplog.text
        assert KEY not in shown


@both_upstreams
def test_requests_name_their_client(fake, upstream):
    fake.script(Script(tokens=1))
    Reader(upstream).rest()
    assert fake.wait_for_calls(1)[0].headers["user-agent"] == "Jarvis"


def test_openai_key_from_a_file(tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    with FakeOpenAI(api_key=KEY) as fake:
        upstream = make_upstream(fake, tmp_path, openai_api_key_file=str(tmp_path / "key"))
        assert Reader(upstream).rest()[-1] == Done("stop", 7, 5)
    with pytest.raises(ConfigError, match="JARVIS_OPENAI_API_KEY_FILE"):
        OpenAIUpstream(Config(openai_api_key_file=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="not both"):
        Config.from_env({"JARVIS_OPENAI_API_KEY": "a", "JARVIS_OPENAI_API_KEY_FILE": "b"})


def test_openai_wrong_key_is_unauthorized_and_the_key_is_not_echoed(tmp_path):
    with FakeOpenAI(api_key=KEY) as fake:
        upstream = make_upstream(fake, tmp_path, openai_api_key="sk-wrong")
        reader = Reader(upstream)
        reader.rest()
        assert isinstance(reader.error, errors.UpstreamUnauthorized)
        assert reader.error.code == "upstream_unauthorized" and "sk-wrong" not in reader.error.message
        health = upstream.health()
        assert health["ok"] is False and health["error"]["code"] == "upstream_unauthorized"
        assert "sk-wrong" not in health["error"]["message"] and "[key]" in health["error"]["message"]


def test_openai_error_event_with_its_own_event_name(tmp_path):
    with FakeOpenAI() as fake:
        raw = [
            b'data: {"choices":[{"delta":{"content":"partial "}}]}\n\n',
            b'event: error\ndata: {"message":"out of memory"}\n\n',
        ]
        fake.script(Script(raw=raw))
        reader = Reader(make_upstream(fake, tmp_path))
        assert reader.rest() == ["partial "]
        assert (
            isinstance(reader.error, errors.UpstreamStreamError) and "out of memory" in reader.error.message
        )


def test_openai_keepalive_comments_do_not_hold_off_the_first_token_timeout(tmp_path):
    # sse-starlette sends ": ping" comments: a per-read timeout alone would wait forever
    with FakeOpenAI() as fake:
        fake.script(Script(forever=b": ping\n\n"))
        reader = Reader(make_upstream(fake, tmp_path, first_token_timeout_s=0.3))
        assert reader.rest() == []
        assert isinstance(reader.error, errors.UpstreamTimeout) and reader.error.code == "first_token_timeout"


@pytest.fixture
def unanswered_port():
    """A loopback port whose accept queue is full: a connect to it waits for the connect timeout."""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = server.getsockname()[1]
    held = []
    while True:
        probe = socket.socket()
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
            held.append(probe)
        except OSError:
            probe.close()
            break
    yield port
    for sock in held:
        sock.close()
    server.close()


def _connecting_to(port: int) -> bool:
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(row[2].endswith(f":{port:04X}") and row[3] == "02" for row in rows)  # 02: SYN_SENT


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_cancel_while_connecting_breaks_the_connect_at_once(unanswered_port, backend):
    # would hang for the whole connect timeout if the socket were registered only once connected
    url = f"http://127.0.0.1:{unanswered_port}"
    config = Config(backend=backend, ollama_url=url, openai_url=url + "/v1", connect_timeout_s=30.0)
    reader = Reader(select_upstream(config))
    wait_for(lambda: _connecting_to(unanswered_port), what="the reader to be connecting")
    began = time.monotonic()
    reader.cancel.cancel("stopped")
    assert reader.rest() == [] and reader.error is None
    reader.close()
    assert time.monotonic() - began < 0.5


@both_upstreams
@pytest.mark.parametrize("framing", FRAMINGS)
def test_every_framing_ends_completed_through_jarvis(api, fake, framing):
    fake.script(Script(tokens=3, interval_s=0.01, framing=framing))
    sid = api.session()
    sse = api.send(sid, "hi")
    assert sse.end() == {"status": "completed"} and sse.text() == "tok0 tok1 tok2 "
    assert api.messages(sid)[-1]["status"] == "completed"


def test_openai_backend_is_served_end_to_end_with_its_models(make_app, make_server, tmp_path):
    with FakeOpenAI(api_key=KEY) as fake:
        app = make_app(**test_config(fake, tmp_path, openai_api_key=KEY))
        api = Api(make_server(app).url)
        health = requests.get(api.url + "/healthz", headers=api.headers, timeout=HTTP_TIMEOUT).json()
        assert health["upstream_ok"] is True and health["backend"] == "openai"
        models = requests.get(api.url + "/api/models", headers=api.headers, timeout=HTTP_TIMEOUT).json()[
            "models"
        ]
        assert {"name": "tiny"} in models
        end = api.send(api.session(), "hi", model="no-such-model").end()
        assert end["status"] == "failed" and end["error"]["code"] == "model_not_found"


class SlowResolver:
    """``socket.getaddrinfo`` for this process, where one name's lookup hangs until released
    (or ``hold_s`` passes); every other name resolves as before."""

    NAME = "slow-dns.test"

    def __init__(self, hold_s: float = 4.0):
        self.hold_s = hold_s
        self.asked = threading.Event()
        self.released = threading.Event()
        self._real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        if host == self.NAME:
            self.asked.set()
            self.released.wait(self.hold_s)
            host = "127.0.0.1"
        return self._real(host, port, *args, **kwargs)


@pytest.fixture
def slow_dns(monkeypatch):
    resolver = SlowResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    yield resolver
    resolver.released.set()  # the lookups still blocked end now


def test_stop_while_the_model_servers_name_resolves_ends_the_answer_at_once(
    make_app, make_server, fake, slow_dns
):
    # would hang: a worker blocked in the name lookup, which no cancel reaches; cleanup waits
    # for it, then leaves it behind, and the lookup's connection is made after the stop
    app = make_app(ollama_url=f"http://{SlowResolver.NAME}:{fake.port}", connect_timeout_s=30.0)
    api = Api(make_server(app).url)
    sid = api.session()
    sse = api.send(sid, "hi")
    sse.until("status")
    assert slow_dns.asked.wait(2)
    began = time.monotonic()
    assert api.stop(sid) == {"stopped": True}
    assert sse.end()["status"] == "stopped"
    took = time.monotonic() - began
    assert took < 0.3, f"the answer ended {took:.2f} s after the stop"
    slow_dns.released.set()
    wait_for(lambda: app.extensions["jarvis"].registry.live() == [], what="the stream released")
    assert fake.chat_calls() == []  # nothing was sent once stopped


def test_the_connect_timeout_bounds_the_name_lookup(make_app, make_server, fake, slow_dns):
    # would hang: a lookup that never answers, outside the connect timeout (here until released)
    app = make_app(ollama_url=f"http://{SlowResolver.NAME}:{fake.port}", connect_timeout_s=0.3)
    api = Api(make_server(app).url)
    began = time.monotonic()
    end = api.send(api.session(), "hi").end()
    took = time.monotonic() - began
    assert end["status"] == "timeout" and end["error"]["code"] == "connect_timeout", end
    assert took < 1.0, f"the connect timeout is 0.3 s; the answer ended after {took:.2f} s"
