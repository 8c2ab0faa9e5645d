"""Stop, supersede, a client leaving and shutdown while thinking or a tool call streams.

The lifecycle is the one every answer has: these tests hold the fake upstream silent in the
middle of the model's thinking, and just after it sent a tool call (before it said it was done),
and check that each ending reaches the upstream socket at once, ends the stream once, and stores
what was shown (thinking and tool calls included) with the final status.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import both_upstreams, wait_for
from tests.fake_ollama import Script

CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
# silent (stalled) after two chunks of thinking, or after the whole tool call but before "done"
STATES = {
    "thinking": lambda: Script(thinking=[f"step {i}. " for i in range(50)], stall_after=2),
    "tool_call": lambda: Script(tokens=0, tool_calls=[CALL], stall_after=1),
}
SEEN = {"thinking": "thinking", "tool_call": "tool_call"}


def started(api, fake, state: str):
    """A session whose answer is held silent in ``state``: (session, its SSE, the upstream call)."""
    fake.script(STATES[state]())
    sid = api.session()
    sse = api.send(sid, "x")
    shown = [sse.until(SEEN[state])]
    while state == "thinking" and "".join(d["text"] for d in shown) != "step 0. step 1. ":
        shown.append(sse.until("thinking"))  # all the fake sends before it goes silent
    return sid, sse, fake.wait_for_calls(1)[0]


def stored_what_was_shown(api, sid: str, sse, state: str, status: str) -> None:
    answer = api.messages(sid)[-1]
    assert answer["status"] == status
    shown = [data for name, data in sse.events if name == SEEN[state]]
    if state == "thinking":
        # all the upstream sent before it went silent, all of it shown
        assert answer["meta"]["thinking"] == "".join(d["text"] for d in shown) == "step 0. step 1. "
    else:
        assert answer["meta"]["tool_calls"] == shown
        assert json.loads(shown[0]["arguments"]) == CALL["arguments"]


@both_upstreams
@pytest.mark.parametrize("state", list(STATES))
def test_stop_ends_it_at_once_and_keeps_what_was_shown(api, fake, state):
    if fake.kind == "openai" and state == "tool_call":
        pytest.skip("an OpenAI-compatible server's call is shown once whole: at its finish_reason")
    # the upstream is silent: without the socket close the worker would wait in recv for the
    # whole idle timeout
    sid, sse, call = started(api, fake, state)
    assert api.stop(sid) == {"stopped": True}
    assert call.wait_closed(2) and call.closed_by == "client"
    assert sse.end() == {"status": "stopped", "reason": "stopped"}
    stored_what_was_shown(api, sid, sse, state, "stopped")


@pytest.mark.parametrize("state", list(STATES))
def test_a_new_prompt_supersedes_it_and_the_old_upstream_closes_first(api, fake, state):
    sid, sse, call = started(api, fake, state)
    fake.script(tokens=2)
    second = api.send(sid, "y")
    assert call.wait_closed(2) and call.closed_by == "client"
    assert sse.end() == {"status": "superseded", "reason": "superseded"}
    assert second.end()["status"] == "completed"
    first, answer = fake.chat_calls()
    assert first.closed_at <= answer.opened_at  # never two upstream streams of one session
    prompts = [m for m in api.messages(sid) if m["role"] == "assistant"]
    assert [m["status"] for m in prompts] == ["superseded", "completed"]


@pytest.mark.parametrize("state", list(STATES))
def test_a_client_that_leaves_ends_it(jarvis_server, api, fake, state):
    sid, sse, call = started(api, fake, state)
    sse.close()
    assert call.wait_closed(2) and call.closed_by == "client"
    wait_for(lambda: api.messages(sid)[-1]["status"] == "disconnected", what="stored as disconnected")
    stored_what_was_shown(api, sid, sse, state, "disconnected")


@pytest.mark.parametrize("state", list(STATES))
def test_shutdown_ends_it_within_its_deadline(make_app, make_server, fake, state):
    from tests.conftest import Api

    app = make_app()
    server = make_server(app)
    api = Api(server.url)
    sid, sse, call = started(api, fake, state)
    assert app.extensions["jarvis"].shutdown(2.0) == []
    assert call.wait_closed(2) and call.closed_by == "client"
    end = sse.end()
    assert end == {"status": "stopped", "reason": "shutdown"}
    wait_for(lambda: api.messages(sid)[-1]["status"] == "stopped", what="stored as stopped")
    stored_what_was_shown(api, sid, sse, state, "stopped")


def test_an_openai_client_that_stops_reading_mid_thinking_closes_the_upstream(served):
    served.fake.script(STATES["thinking"]())
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0, timeout=5)
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], stream=True, reasoning_effort="low"
    )
    for chunk in stream:
        if chunk.choices and getattr(chunk.choices[0].delta, "reasoning_content", None):
            break
    stream.close()
    (call,) = served.fake.chat_calls()
    assert call.wait_closed(2) and call.closed_by == "client"
    client.close()
