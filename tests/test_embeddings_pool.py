"""Embeddings on kept upstream connections: one connection carries batch after batch, as it does
to a real Ollama; a kept connection the server closed is sent again once on a new one, only when
nothing came back on it; closing the upstream closes the kept connections and breaks the ones in use.

Black-box against the fake upstreams, which keep an embedding's connection open for the next
request and note on each call which connection carried it.
"""

from __future__ import annotations

import threading

import pytest
import requests

from jarvis.config import Config
from jarvis.errors import UpstreamDisconnected, UpstreamError
from jarvis.upstream.ollama import OllamaUpstream
from tests.conftest import HTTP_TIMEOUT, both_upstreams, wait_for
from tests.fake_wire import vector


def embed_calls(fake) -> list:
    return [c for c in fake.calls if "embed" in c.path]


def post(served, route: str, texts: list[str]) -> requests.Response:
    return requests.post(
        served.url + route, json={"model": "tiny", "input": texts}, headers=served.auth, timeout=HTTP_TIMEOUT
    )


@pytest.fixture
def upstream(fake):
    made = OllamaUpstream(Config(ollama_url=fake.url, model="tiny"))
    yield made
    made.close()


@both_upstreams
def test_batches_one_after_another_share_one_upstream_connection(served):
    route = "/v1/embeddings" if served.fake.kind == "openai" else "/api/embed"
    for i in range(5):
        r = post(served, route, [f"text {i}", "again"])
        assert r.status_code == 200, r.text
    calls = embed_calls(served.fake)
    assert len(calls) == 5
    assert len({c.connection for c in calls}) == 1  # a new connection each was the old way


def test_a_kept_connection_the_upstream_closed_is_sent_again_on_a_new_one(served):
    assert post(served, "/api/embed", ["first"]).status_code == 200
    served.fake.kept_faults.append("drop")  # the server closes the kept connection as the request comes
    r = post(served, "/api/embed", ["second"])
    assert r.status_code == 200, r.text
    assert r.json()["embeddings"] == [vector("second")]
    first, dropped, again = embed_calls(served.fake)
    assert dropped.closed_by == "server (drop)" and dropped.connection == first.connection
    assert again.body == dropped.body and again.connection != first.connection
    assert post(served, "/api/embed", ["third"]).status_code == 200
    assert embed_calls(served.fake)[-1].connection == again.connection  # the new one is kept in turn


def test_a_kept_connection_that_began_to_answer_is_not_sent_again(served):
    assert post(served, "/api/embed", ["first"]).status_code == 200
    served.fake.kept_faults.append("half")  # a status line, then the connection closes
    r = post(served, "/api/embed", ["second"])
    assert r.status_code == 502, r.text
    assert "broke" in r.json()["error"]
    assert [c.body["input"] for c in embed_calls(served.fake)] == [["first"], ["second"]]  # sent once
    assert post(served, "/api/embed", ["third"]).status_code == 200  # and the next one opens anew


def test_closing_the_upstream_closes_its_kept_connections(upstream, fake):
    upstream.embed("tiny", ["a"])
    (call,) = embed_calls(fake)
    assert not call.wait_closed(0.2)  # kept open for the next batch
    upstream.close()
    assert call.wait_closed(2.0) and call.closed_by == "client"


@pytest.mark.timeout(20)
def test_closing_the_upstream_breaks_an_embedding_still_running(upstream, fake):
    # would hang: the batch's recv waits out the first-token timeout (minutes) unless close breaks it
    fake.embed_delay_s = 30.0
    failed: list[BaseException] = []

    def embed() -> None:
        try:
            upstream.embed("tiny", ["slow"])
        except UpstreamError as e:
            failed.append(e)

    worker = threading.Thread(target=embed, name="test-embed")
    worker.start()
    try:
        wait_for(lambda: embed_calls(fake), timeout=5.0, what="the fake to receive the batch")
        upstream.close()
        (call,) = embed_calls(fake)
        assert call.wait_closed(2.0) and call.closed_by == "client"
    finally:
        worker.join(5.0)
    assert not worker.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], UpstreamDisconnected)


def test_an_embedding_after_close_opens_nothing_that_stays(upstream, fake):
    upstream.close()
    with pytest.raises(UpstreamError):
        upstream.embed("tiny", ["late"])
    for call in embed_calls(fake):
        assert call.wait_closed(2.0)


def test_a_kept_connection_idle_too_long_is_closed_not_used(fake):
    made = OllamaUpstream(Config(ollama_url=fake.url, model="tiny"))
    made.pool.idle_s = -1.0  # every kept connection is already too old when the next call looks
    try:
        made.embed("tiny", ["a"])
        made.embed("tiny", ["b"])
        first, second = embed_calls(fake)
        assert first.wait_closed(2.0)  # the pool closed it when it found it too old
        assert second.connection != first.connection
    finally:
        made.close()


def answer_with(fake, vectors: list[str], tokens: int | None = None) -> None:
    """The fake answers embeddings with ``vectors`` written as given, in its dialect's shape."""
    if fake.kind == "openai":
        data = ",".join(f'{{"index": {i}, "embedding": {v}}}' for i, v in enumerate(vectors))
        usage = f', "usage": {{"prompt_tokens": {tokens}}}' if tokens is not None else ""
        fake.embed_text = f'{{"data": [{data}]{usage}}}'
    else:
        count = f', "prompt_eval_count": {tokens}' if tokens is not None else ""
        fake.embed_text = f'{{"embeddings": [{",".join(vectors)}]{count}}}'


@both_upstreams
def test_the_vectors_go_on_in_the_text_the_upstream_wrote_them_in(served):
    vectors = ["[0.1000, -2.50e-1, 3]", "[ 1E-5,0.0 ,-0 ]"]
    answer_with(served.fake, vectors, tokens=4)
    for route in ("/api/embed", "/v1/embeddings"):
        r = post(served, route, ["a", "b"])
        assert r.status_code == 200, r.text
        assert all(v in r.text for v in vectors), r.text  # written again, 0.1000 would come back as 0.1
        got = r.json()["embeddings"] if route == "/api/embed" else [d["embedding"] for d in r.json()["data"]]
        assert got == [[0.1, -0.25, 3], [1e-5, 0.0, 0]]


@both_upstreams
@pytest.mark.parametrize(
    "vectors, why",
    [
        (["[1, NaN]", "[1, 2]"], "finite"),  # JSON has no NaN: written on, the client could not parse it
        (["[1, Infinity]", "[1, 2]"], "finite"),
        (["[1, 1e999]", "[1, 2]"], "finite"),
        (['[1, "2"]', "[1, 2]"], "finite"),
        (["[1, [2]]", "[1, 2]"], "finite"),
        (["[]", "[]"], "finite"),
        (["[1, 2]", "[1, 2, 3]"], "2 and 3 numbers"),
        (["[1, 2]"], "1 embeddings for 2 inputs"),
    ],
)
def test_vectors_that_fail_the_checks_never_reach_the_client(served, vectors, why):
    answer_with(served.fake, vectors)
    for route in ("/api/embed", "/v1/embeddings"):
        r = post(served, route, ["a", "b"])
        assert r.status_code == 502, r.text
        assert why in r.text
