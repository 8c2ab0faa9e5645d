"""Ollama's /api/show and /api/ps through Jarvis: what a front-end asks before it chats (a model's
context length and capabilities, the models loaded), passed through to the host that has the model."""

from __future__ import annotations

import ollama
import pytest
import requests

from jarvis.errors import ModelNotFound
from jarvis.upstream.local import LocalUpstream
from tests.conftest import HTTP_TIMEOUT, LOCAL_TOKEN
from tests.fake_ollama import FakeOllama
from tests.fake_openai import FakeOpenAI
from tests.test_local import FakeLlama, fake_abort  # noqa: F401 (a fixture)


@pytest.fixture
def oll(served):
    client = ollama.Client(host=served.url, headers={"Authorization": f"Bearer {served.token}"}, timeout=5)
    yield client
    client.close()


def client_at(url: str) -> ollama.Client:
    return ollama.Client(host=url, headers={"Authorization": f"Bearer {LOCAL_TOKEN}"}, timeout=5)


def test_show_passes_on_ollamas_answer(oll):
    shown = oll.show("tiny")
    assert shown.modelinfo["llama.context_length"] == 8192
    assert "completion" in shown.capabilities and "tools" in shown.capabilities
    assert shown.details.family == "llama"


def test_show_of_a_model_no_host_has_is_404_in_ollamas_shape(oll, served):
    with pytest.raises(ollama.ResponseError) as e:
        oll.show("nope")
    assert e.value.status_code == 404 and "nope" in e.value.error
    r = requests.post(served.url + "/api/show", json={}, headers=served.auth, timeout=HTTP_TIMEOUT)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


def test_ps_lists_the_models_loaded(oll):
    names = [m.model for m in oll.ps().models]
    assert names == ["llama3.2:latest", "tiny:latest"]


@pytest.mark.parametrize("route, method", [("/api/show", "post"), ("/api/ps", "get")])
def test_show_and_ps_want_a_credential(served, route, method):
    r = requests.request(method, served.url + route, json={"model": "tiny"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 401 and isinstance(r.json()["error"], str)


def test_with_several_hosts_show_asks_the_one_with_the_model_and_ps_is_the_union(make_app, make_server):
    with FakeOllama(models=("big",)) as a, FakeOllama(models=("small",)) as b:
        app = make_app(upstreams=f"ollama={a.url},ollama={b.url}", health_interval_s=0.05)
        client = client_at(make_server(app).url)
        try:
            assert client.show("small").modelinfo["llama.context_length"] == 8192
            shows = [c for c in a.calls + b.calls if c.path == "/api/show" and c.body.get("model") == "small"]
            assert shows and all(c in b.calls for c in shows)
            assert sorted(m.model for m in client.ps().models) == ["big:latest", "small:latest"]
            with pytest.raises(ollama.ResponseError) as e:
                client.show("neither")
            assert e.value.status_code == 404
        finally:
            client.close()


def test_an_openai_compatible_host_shows_what_it_is_configured_with(make_app, make_server):
    with FakeOpenAI(models=("qwen",)) as fake:
        app = make_app(backend="openai", openai_url=fake.api_url, openai_capabilities="tools,vision")
        client = client_at(make_server(app).url)
        try:
            shown = client.show("qwen")
            assert sorted(shown.capabilities) == ["completion", "tools", "vision"]
            assert client.ps().models == []
            with pytest.raises(ollama.ResponseError) as e:
                client.show("nope")
            assert e.value.status_code == 404
        finally:
            client.close()


@pytest.mark.usefixtures("fake_abort")
def test_the_embedded_model_shows_its_own_window():
    local = LocalUpstream(llama=FakeLlama(), model_name="smol", n_ctx=4096)
    try:
        shown = local.show("smol")
        assert shown["capabilities"] == ["completion"]
        assert any(k.endswith(".context_length") and v == 4096 for k, v in shown["model_info"].items())
        assert [m["name"] for m in local.running()] == ["smol"]  # a stand-in counts as loaded
        with pytest.raises(ModelNotFound):
            local.show("other")
    finally:
        local.close()
