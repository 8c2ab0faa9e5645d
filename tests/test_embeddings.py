"""Embeddings through Jarvis: OpenAI's /v1/embeddings, Ollama's /api/embed and /api/embeddings, driven by
the official ``openai`` and ``ollama`` clients and LangChain, against the fake upstreams.

The fakes answer each text with a vector made from its hash (``fake_wire.vector``), so a test knows
the exact numbers that must come back, whatever the encoding on the way.
"""

from __future__ import annotations

import ollama
import openai
import pytest
import requests
from langchain_ollama import OllamaEmbeddings
from langchain_openai import OpenAIEmbeddings

from jarvis.errors import Unsupported
from jarvis.upstream.local import LocalUpstream, find_model
from jarvis.upstream.local import available as local_available
from tests.conftest import HTTP_TIMEOUT, both_upstreams
from tests.fake_ollama import FakeOllama
from tests.fake_wire import vector
from tests.test_local import FakeLlama, fake_abort  # noqa: F401 (a fixture)

ROUTES = ["/v1/embeddings", "/api/embed", "/api/embeddings"]


@pytest.fixture
def oll(served):
    client = ollama.Client(host=served.url, headers={"Authorization": f"Bearer {served.token}"}, timeout=5)
    yield client
    client.close()


def embed_calls(fake) -> list:
    return [c for c in fake.calls if "embed" in c.path]


def close_to(got, texts, dims=4):
    assert len(got) == len(texts)
    for vec, text in zip(got, texts, strict=True):
        assert list(vec) == pytest.approx(vector(text, dims), rel=1e-6)


@both_upstreams
def test_openai_client_gets_vectors_in_base64_by_default_and_as_floats(oai, served):
    texts = ["the cat sat", "on the mat"]
    default = oai.embeddings.create(model="tiny", input=texts)  # the client asks for base64 and decodes
    close_to([d.embedding for d in default.data], texts)
    assert [d.index for d in default.data] == [0, 1] and default.object == "list"
    assert default.usage.prompt_tokens > 0
    floats = oai.embeddings.create(model="tiny", input="one text", encoding_format="float")
    close_to([floats.data[0].embedding], ["one text"])
    calls = embed_calls(served.fake)
    assert [c.body["input"] for c in calls] == [texts, ["one text"]]
    assert all(c.body["model"] == "tiny" for c in calls)


def test_openai_embeddings_pass_dimensions_and_log_the_user(oai, served):
    answer = oai.embeddings.create(
        model="tiny", input="x", dimensions=2, user="someone", encoding_format="float"
    )
    assert len(answer.data[0].embedding) == 2
    assert embed_calls(served.fake)[0].body["dimensions"] == 2


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "tiny", "input": [1, 2, 3]}, "input"),
        ({"model": "tiny", "input": [[1, 2], [3]]}, "input"),
        ({"model": "tiny", "input": []}, "input"),
        ({"model": "tiny", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "tiny", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "tiny", "input": "x", "frobnicate": 1}, "frobnicate"),
    ],
)
def test_openai_embeddings_refuse_what_they_cannot_honour(served, body, param):
    r = requests.post(served.url + "/v1/embeddings", json=body, headers=served.auth, timeout=HTTP_TIMEOUT)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert embed_calls(served.fake) == []


def test_token_arrays_are_refused_naming_langchains_setting(served):
    r = requests.post(
        served.url + "/v1/embeddings", json={"model": "tiny", "input": [[1, 2]]}, headers=served.auth,
        timeout=HTTP_TIMEOUT,
    )  # fmt: skip
    assert "check_embedding_ctx_length=False" in r.json()["error"]["message"]


def test_a_batch_over_the_bounds_is_refused_before_the_upstream(make_served):
    served = make_served(embed_max_inputs=2, embed_max_bytes=10)
    for texts in (["a", "b", "c"], ["0123456789", "x"]):
        r = requests.post(
            served.url + "/v1/embeddings", json={"model": "tiny", "input": texts}, headers=served.auth,
            timeout=HTTP_TIMEOUT,
        )  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
        r = requests.post(
            served.url + "/api/embed", json={"model": "tiny", "input": texts}, headers=served.auth,
            timeout=HTTP_TIMEOUT,
        )  # fmt: skip
        assert r.status_code == 400 and "input" in r.json()["error"], r.text
    assert embed_calls(served.fake) == []


def test_ollama_client_embed_with_its_options(oll, served):
    answer = oll.embed(
        model="tiny", input=["a", "b"], truncate=False, keep_alive="1m", options={"num_ctx": 64}
    )
    close_to(answer.embeddings, ["a", "b"])
    assert answer.model == "tiny" and answer.prompt_eval_count > 0
    one = oll.embed(model="tiny", input="single")
    close_to(one.embeddings, ["single"])
    first, second = embed_calls(served.fake)
    assert first.path == "/api/embed"
    knobs = {"truncate": False, "keep_alive": "1m", "options": {"num_ctx": 64}}
    assert first.body == {"model": "tiny", "input": ["a", "b"], **knobs}
    assert second.body == {"model": "tiny", "input": ["single"]}


def test_ollama_client_older_embeddings_route(oll, served):
    answer = oll.embeddings(model="tiny", prompt="old style")
    close_to([answer.embedding], ["old style"])


def test_ollama_embed_errors_are_ollamas_shape(oll, served):
    with pytest.raises(ollama.ResponseError) as e:
        oll.embed(model="nope", input="x")
    assert e.value.status_code == 404
    r = requests.post(
        served.url + "/api/embed", json={"model": "tiny", "input": "x", "options": {"bogus": 1}},
        headers=served.auth, timeout=HTTP_TIMEOUT,
    )  # fmt: skip
    assert r.status_code == 400 and "options.bogus" in r.json()["error"]


def test_openai_client_unknown_model_is_not_found(oai):
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="nope", input="x")


def test_langchain_ollama_embeddings(served):
    auth = {"headers": {"Authorization": f"Bearer {served.token}"}, "timeout": 5}
    emb = OllamaEmbeddings(base_url=served.url, model="tiny", client_kwargs=auth)
    close_to(emb.embed_documents(["first", "second"]), ["first", "second"])
    close_to([emb.embed_query("query")], ["query"])


def test_langchain_openai_embeddings_without_token_arrays(served):
    emb = OpenAIEmbeddings(
        base_url=served.url + "/v1", api_key=served.token, model="tiny", check_embedding_ctx_length=False,
        max_retries=0,
    )  # fmt: skip
    close_to(emb.embed_documents(["first", "second"]), ["first", "second"])


@pytest.mark.parametrize("route", ROUTES)
def test_every_embeddings_route_wants_a_credential(served, route):
    body = {"model": "tiny", "input": "x", "prompt": "x"}
    r = requests.post(served.url + route, json=body, timeout=HTTP_TIMEOUT)
    assert r.status_code == 401
    bad = {"Authorization": "Bearer not-a-token"}
    assert requests.post(served.url + route, json=body, headers=bad, timeout=HTTP_TIMEOUT).status_code == 401
    assert embed_calls(served.fake) == []


def test_embeddings_count_per_dialect_and_user(oai, oll, served):
    oai.embeddings.create(model="tiny", input=["a", "b"])
    oll.embed(model="tiny", input="c")
    metrics = requests.get(served.url + "/metrics", headers=served.auth, timeout=HTTP_TIMEOUT).text
    assert 'jarvis_compat_calls_total{api="openai",user="ann"} 1.0' in metrics
    assert 'jarvis_compat_calls_total{api="ollama",user="ann"} 1.0' in metrics
    assert 'jarvis_compat_tokens_total{api="openai",kind="prompt",user="ann"}' in metrics


def test_embeddings_go_to_the_host_that_has_the_model(make_app, make_server):
    with FakeOllama(models=("big",)) as a, FakeOllama(models=("embedder",)) as b:
        app = make_app(upstreams=f"ollama={a.url},ollama={b.url}", health_interval_s=0.05)
        url = make_server(app).url
        r = requests.post(
            url + "/v1/embeddings", json={"model": "embedder", "input": ["z"]},
            headers={"Authorization": "Bearer " + app.extensions["jarvis"].config.local_token},
            timeout=HTTP_TIMEOUT,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        assert embed_calls(a) == [] and [c.body["input"] for c in embed_calls(b)] == [["z"]]


@pytest.mark.usefixtures("fake_abort")
def test_the_embedded_backend_says_it_has_no_embedding_model():
    local = LocalUpstream(llama=FakeLlama(), model_name="smol")
    with pytest.raises(Unsupported) as e:
        local.embed("smol", ["x"])
    assert "JARVIS_LOCAL_EMBED_MODEL" in e.value.message


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.usefixtures("fake_abort")
def test_the_embedded_backend_embeds_with_the_gguf_it_is_given():
    path = find_model()
    if not path or not local_available():
        pytest.skip("the embedded model is not installed")
    upstream = LocalUpstream(llama=FakeLlama(), model_name="smol", embed_model=path)
    try:
        found = upstream.embed("smol", ["hello there", "a different text"])
        with pytest.raises(Unsupported):
            upstream.embed("smol", ["x"], dimensions=8)
    finally:
        upstream.close()
    first, second = found.vectors
    assert len(first) == len(second) > 16 and first != second
    assert found.prompt_tokens > 0
