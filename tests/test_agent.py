"""Every native answer an agent task: the model calls tools from MCP servers, Jarvis runs them.

The real app under waitress, the fake Ollama scripted to call tools, and tests/fake_mcp.py (a
real MCP server over stdio) as the tool source. A running tool must never delay an answer's end:
Stop, a new prompt, the client leaving, deleting the chat and shutdown end it at once, the MCP
server hears the cancel, and no server process outlives Jarvis (counted through /proc by the tag
on its command line).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass

import pytest
import requests
from flask import Flask

from tests.conftest import HTTP_TIMEOUT, SSE, Api, wait_for
from tests.fake_ollama import FakeOllama, Script
from tests.test_tools import Fake, mcp_server_time, tagged

# slow by the suite's rule: these tests start MCP server processes of their own (about 0.6 s of a
# core each, for the SDK's import), as the README says of every test marked slow
pytestmark = pytest.mark.slow

FAST_S = 0.5  # "at once", under a loaded two-core machine; the bench holds the 50 ms p99 goal


def echo(text: str) -> dict:
    return {"name": "fake__echo", "arguments": {"text": text}}


def sleep(seconds: float = 30, name: str = "fake__sleep") -> dict:
    return {"name": name, "arguments": {"seconds": seconds}}


def shape(messages: list[dict]) -> list[tuple]:
    """Messages as the model got them (Ollama's wire), reduced to what a step is made of."""
    out = []
    for m in messages:
        step: tuple = (m["role"], m.get("content", ""))
        if m.get("tool_calls"):
            step += ([(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]],)
        if m.get("tool_name"):
            step += (m["tool_name"],)
        out.append(step)
    return out


def unanswered(messages: list[dict]) -> list[list[dict]]:
    """The tool calls of a context that no tool message answers. A real server refuses such a
    context (OpenAI: 400, "tool_calls must be followed by tool messages"), and a model that sees
    its own call unanswered may take it as still running."""
    left = []
    for i, m in enumerate(messages):
        calls = m.get("tool_calls") or []
        answers = list(itertools.takewhile(lambda n: n["role"] == "tool", messages[i + 1 :]))
        if len(answers) < len(calls):
            left.append(calls[len(answers) :])
    return left


@dataclass
class Tooled:
    """Jarvis under waitress with the MCP servers of ``mcp``, and the fakes behind it."""

    api: Api
    app: Flask
    fake: FakeOllama
    mcp: Fake

    @property
    def jarvis(self):
        return self.app.extensions["jarvis"]

    def idle(self) -> bool:
        return self.jarvis.registry.active() == 0


@pytest.fixture
def mcp(tmp_path):
    """The fake MCP servers' config and logs; after the app has shut down, none of their processes is left."""
    f = Fake(tmp_path)
    yield f
    # torn down after make_app's shutdown (set up before it): nothing of the tools outlives Jarvis
    wait_for(lambda: not tagged(f.tag), 3.0, what="every fake MCP server process to end")


@pytest.fixture
def tooled(mcp, make_app, make_server, fake, tmp_path):
    """Serve an app whose tools are ``servers`` (default: one fake MCP server named "fake")."""

    def make(servers: dict | None = None, **overrides) -> Tooled:
        if servers is None and not mcp.servers:
            mcp.add("fake")
        path = tmp_path / "mcp.json"
        path.write_text(json.dumps({"mcpServers": servers or mcp.servers}))
        settings = {"mcp_config": str(path), "tool_start_timeout_s": 20.0, "tool_timeout_s": 20.0}
        app = make_app(**(settings | overrides))
        return Tooled(Api(make_server(app).url), app, fake, mcp)

    return make


def tool_events(sse: SSE) -> list[str]:
    """The names of the answer's events that matter here, a run of tokens as one."""
    names = [n for n, _ in sse.events if n in ("token", "tool_call", "tool_result", "end")]
    return [n for n, _ in itertools.groupby(names)]


def patch_settings(api: Api, sid: str, settings: dict) -> None:
    r = requests.patch(
        f"{api.url}/api/sessions/{sid}",
        json={"settings": settings},
        headers=api.headers,
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, r.text


# 1. a tool round


def test_a_tool_round_streams_is_stored_and_goes_back_as_its_steps(tooled):
    t = tooled()
    t.fake.push(
        Script(tokens=["Let me look. "], tool_calls=[echo("one"), echo("two")]),
        Script(tokens=["And "], tool_calls=[echo("three")]),
        Script(tokens=["Done."]),
    )
    sid = t.api.session()
    sse = t.api.send(sid, "use echo")
    assert sse.end() == {"status": "completed"}
    assert tool_events(sse) == [
        "token",
        "tool_call",
        "tool_result",
        "token",
        "tool_call",
        "tool_result",
        "token",
        "end",
    ]
    calls = [d for n, d in sse.events if n == "tool_call"]
    results = [d for n, d in sse.events if n == "tool_result"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("fake__echo", {"text": "one"}), ("fake__echo", {"text": "two"}), ("fake__echo", {"text": "three"})
    ]  # fmt: skip
    assert [r["id"] for r in results] == [c["id"] for c in calls] and len({c["id"] for c in calls}) == 3
    assert [(r["content"], r["is_error"]) for r in results] == [
        ("one", False),
        ("two", False),
        ("three", False),
    ]
    assert all(isinstance(r["duration_ms"], float | int) and r["duration_ms"] >= 0 for r in results)
    assert sse.text() == "Let me look. And Done."

    first, second, third = t.fake.chat_calls()
    offered = {tool["function"]["name"]: tool["function"] for tool in first.body["tools"]}
    assert {"fake__echo", "fake__sleep", "fake__crash"} <= set(offered)
    assert offered["fake__echo"]["description"] == "Answer the text it was given."
    schema = offered["fake__echo"]["parameters"]
    assert schema["type"] == "object" and schema["properties"]["text"]["type"] == "string"
    assert second.body["tools"] == first.body["tools"] == third.body["tools"]
    assert shape(second.body["messages"]) == [
        ("user", "use echo"),
        ("assistant", "Let me look. ", [("fake__echo", {"text": "one"}), ("fake__echo", {"text": "two"})]),
        ("tool", "one", "fake__echo"),
        ("tool", "two", "fake__echo"),
    ]
    assert shape(third.body["messages"]) == shape(second.body["messages"]) + [
        ("assistant", "And ", [("fake__echo", {"text": "three"})]),
        ("tool", "three", "fake__echo"),
    ]

    user, answer = t.api.messages(sid)
    assert (answer["status"], answer["content"]) == ("completed", "Let me look. And Done.")
    stored = answer["meta"]["tool_calls"]
    assert [(c["id"], c["name"], c["arguments"]) for c in stored] == [
        (c["id"], c["name"], c["arguments"]) for c in calls
    ]
    assert [c["result"] for c in stored] == results
    assert [c["at"] for c in stored] == [13, 13, 17]  # where in the text each was made

    t.fake.push(Script(tokens=["Sure."]))
    assert t.api.send(sid, "and again?").end() == {"status": "completed"}
    again = t.fake.chat_calls()[3].body["messages"]
    # the answer goes back as the steps the model took, as it saw them while answering
    assert shape(again) == shape(third.body["messages"]) + [
        ("assistant", "Done."),
        ("user", "and again?"),
    ]


def test_api_tools_lists_the_servers_and_their_tool_ids(tooled):
    t = tooled()
    r = requests.get(t.api.url + "/api/tools", headers=t.api.headers, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    (server,) = r.json()["servers"]
    assert r.json()["configured"] is True
    # a listing is a first use: it starts the server, waiting a bounded while for it
    assert (server["server"], server["transport"]) == ("fake", "stdio")
    assert server["state"] in ("ready", "not started")
    t.fake.push(Script(tokens=0, tool_calls=[echo("x")]), Script(tokens=["ok"]))
    assert t.api.send(t.api.session(), "go").end() == {"status": "completed"}
    (server,) = requests.get(t.api.url + "/api/tools", headers=t.api.headers, timeout=HTTP_TIMEOUT).json()[
        "servers"
    ]
    assert server["state"] == "ready" and server["error"] is None
    ids = {tool["id"]: tool for tool in server["tools"]}
    assert {"fake__echo", "fake__sleep", "fake__sleep_ignoring_cancel", "fake__crash"} <= set(ids)
    assert ids["fake__echo"] == {
        "id": "fake__echo",
        "name": "echo",
        "description": "Answer the text it was given.",
    }


# 2. and 3. a running tool never delays the end


def cancel(t: Tooled, sid: str, sse: SSE, how: str) -> tuple[float, dict | None]:
    """End the answer ``how``; how long its end took, and its end event (None: nobody reads it)."""
    started = time.monotonic()
    if how == "stop":
        assert t.api.stop(sid) == {"stopped": True}
    elif how == "supersede":
        t.next = t.api.send(sid, "never mind")
    elif how == "disconnect":
        sse.close()
        wait_for(t.idle, 2.0, what="the answer to end after its client left")
        return time.monotonic() - started, None
    elif how == "delete":
        r = requests.delete(f"{t.api.url}/api/sessions/{sid}", headers=t.api.headers, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200 and r.json() == {"deleted": True}
    elif how == "shutdown":
        assert t.jarvis.shutdown(5.0) == []
        # shutdown returned: the tool loop stopped every server, none is left running or orphaned
        assert tagged(t.mcp.tag) == []
    end = sse.end()
    return time.monotonic() - started, end


CANCELS = {  # how an answer is ended -> its status
    "stop": "stopped",
    "supersede": "superseded",
    "disconnect": "disconnected",
    "delete": "stopped",
    "shutdown": "stopped",
}


def stored_answer(t: Tooled, make_app, sid: str, how: str) -> dict | None:
    """The answer as stored (None for a deleted chat); after a shutdown, read by a new app."""
    if how == "delete":
        r = requests.get(f"{t.api.url}/api/sessions/{sid}", headers=t.api.headers, timeout=HTTP_TIMEOUT)
        assert r.status_code == 404
        return None
    if how == "shutdown":
        r = make_app().test_client().get(f"/api/sessions/{sid}")
        return r.get_json()["messages"][1]
    return wait_for(
        lambda: next((m for m in t.api.messages(sid)[1:2] if m["status"] == CANCELS[how]), None),
        3.0,
        what="the answer stored",
    )


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", list(CANCELS))
def test_a_running_tool_never_delays_the_end(tooled, make_app, how):
    # would hang: the answer's end waiting out a 30 s tool (its worker blocked in the tool call)
    t = tooled()
    t.fake.push(Script(tokens=["Looking. "], tool_calls=[sleep(30)]), Script(tokens=["Done."]))
    sid = t.api.session()
    sse = t.api.send(sid, "sleep")
    call = sse.until("tool_call")
    t.mcp.wait_event("fake", "sleeping")
    took, end = cancel(t, sid, sse, how)
    assert took < FAST_S, f"the answer took {took * 1000:.0f} ms to end after {how}"
    if end is not None:
        assert end["status"] == CANCELS[how]
        assert "tool_result" not in [n for n, _ in sse.events]
    t.mcp.wait_event("fake", "cancelled")  # the server heard notifications/cancelled
    answer = stored_answer(t, make_app, sid, how)
    if answer is not None:
        assert (answer["status"], answer["content"]) == (CANCELS[how], "Looking. ")
        assert answer["meta"]["tool_calls"] == [call]  # the call made, without a result: it never had one
    if how == "supersede":
        assert t.next.end() == {"status": "completed"} and t.next.text() == "Done."
    elif how in ("stop", "disconnect"):
        assert t.api.send(sid, "never mind").end() == {"status": "completed"}
    if how in ("stop", "supersede", "disconnect"):
        context = t.fake.chat_calls()[-1].body["messages"]
        assert context[-1]["content"] == "never mind"
        assert unanswered(context) == [], "the stopped answer's tool call goes back unanswered"
    wait_for(t.idle, 2.0, what="no answer left live")


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", list(CANCELS))
def test_a_tool_that_ignores_the_cancel_never_delays_the_end_and_is_restarted(tooled, how):
    # would hang: the end waiting for a server blocked in its tool, which answers neither the
    # cancel nor a ping; would leak: that server left running (or orphaned) after its restart
    t = tooled(tool_cancel_timeout_s=0.3)
    t.fake.push(Script(tokens=0, tool_calls=[sleep(30, "fake__sleep_ignoring_cancel")]))
    sid = t.api.session()
    sse = t.api.send(sid, "block")
    sse.until("tool_call")
    t.mcp.wait_event("fake", "sleeping")
    (blocked,) = tagged(t.mcp.tag)
    took, end = cancel(t, sid, sse, how)
    assert took < FAST_S, f"the answer took {took * 1000:.0f} ms to end after {how}"
    assert end is None or end["status"] == CANCELS[how]
    # stopped within the cancel timeout (0.3 s), terminate's grace (0.5 s), and slack for load
    wait_for(lambda: blocked not in tagged(t.mcp.tag), 3.0, what="the blocked server to be stopped")
    if how == "shutdown":
        return
    if how == "supersede":
        t.next.rest()  # the default script: tokens, no tool
    t.fake.push(Script(tokens=0, tool_calls=[echo("again")]), Script(tokens=["Back."]))
    after = t.api.send(t.api.session(), "echo")
    assert after.end() == {"status": "completed"}
    assert [(d["content"], d["is_error"]) for n, d in after.events if n == "tool_result"] == [
        ("again", False)
    ]
    (restarted,) = tagged(t.mcp.tag)
    assert restarted != blocked
    assert len([e for e in t.mcp.events("fake") if e["event"] == "started"]) == 2


# 4. faults are results the model sees


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "tool, says", [("fake__crash", "exited with code 3"), ("fake__garbage", "not JSON-RPC")]
)
def test_a_broken_tool_is_an_error_result_and_the_answer_goes_on(tooled, tool, says):
    # would hang: the call waiting for an answer from a server that died or wrote garbage
    t = tooled()
    t.fake.push(Script(tokens=0, tool_calls=[{"name": tool, "arguments": {}}]), Script(tokens=["It broke."]))
    sse = t.api.send(t.api.session(), "break it")
    assert sse.end() == {"status": "completed"} and sse.text() == "It broke."
    (result,) = [d for n, d in sse.events if n == "tool_result"]
    assert result["is_error"] is True and says in result["content"]
    assert result["duration_ms"] < 5000
    told = t.fake.chat_calls()[1].body["messages"][-1]
    # Ollama's tool message has no error flag: the model reads the failure in the text
    assert told["role"] == "tool" and told["tool_name"] == tool and says in told["content"]


def test_a_flood_reaches_the_model_cut_to_the_limit(tooled):
    t = tooled(tool_result_max_chars=1000)
    t.fake.push(
        Script(tokens=0, tool_calls=[{"name": "fake__flood", "arguments": {"chars": 2_000_000}}]),
        Script(tokens=["Long."]),
    )
    sse = t.api.send(t.api.session(), "flood")
    assert sse.end() == {"status": "completed"}
    (result,) = [d for n, d in sse.events if n == "tool_result"]
    told = t.fake.chat_calls()[1].body["messages"][-1]["content"]
    assert result["content"] == told and told.startswith("x" * 1000) and "x" * 1001 not in told
    assert "cut: the result was 2000000 characters" in told


# 5. the step limit


def test_past_the_step_limit_the_answer_ends_as_length_and_says_so(tooled):
    t = tooled(agent_max_steps=2)
    t.fake.script(Script(tokens=0, tool_calls=[echo("more")]))  # a model that never stops calling
    sid = t.api.session()
    sse = t.api.send(sid, "loop")
    assert sse.end() == {"status": "length"}
    assert "JARVIS_AGENT_MAX_STEPS" in sse.text() and "2 steps" in sse.text()
    assert len(t.fake.chat_calls()) == 2
    assert [n for n, _ in sse.events].count("tool_result") == 2
    answer = t.api.messages(sid)[-1]
    assert answer["status"] == "length" and "JARVIS_AGENT_MAX_STEPS" in answer["content"]


# 6. the chat's settings choose its tools


def test_a_chat_offers_no_tools_or_only_those_its_settings_name(tooled):
    t = tooled()
    t.fake.script(Script(tokens=["ok"]))
    none, some, every = t.api.session(), t.api.session(), t.api.session()
    patch_settings(t.api, none, {"tools": False})
    patch_settings(t.api, some, {"tools": ["fake__echo", "fake__flood", "nobody__here"]})
    for sid in (none, some, every):
        assert t.api.send(sid, "hi").end() == {"status": "completed"}
    bodies = [c.body for c in t.fake.chat_calls()]
    assert "tools" not in bodies[0]
    assert sorted(tool["function"]["name"] for tool in bodies[1]["tools"]) == ["fake__echo", "fake__flood"]
    assert {"fake__echo", "fake__sleep", "fake__crash"} <= {
        tool["function"]["name"] for tool in bodies[2]["tools"]
    }


# 7. two users' tools run side by side


@pytest.mark.timeout(40)
def test_one_users_slow_tool_does_not_delay_another_users_answer(tooled):
    # would hang (for 3 s): the second user's answer queued behind the first one's running tool
    t = tooled()
    accounts = t.jarvis.accounts
    apis = {}
    for name in ("ann", "bob"):
        accounts.add(name, "correct horse battery")
        apis[name] = Api(t.api.url, accounts.create_token(name, "tests"))

    def script(body):
        last = body["messages"][-1]
        if last["role"] == "tool":
            return Script(tokens=[f"Got {last['content']}."])
        return Script(tokens=0, tool_calls=[sleep(3) if "slow" in last["content"] else echo("quick")])

    t.fake.script(script)
    slow = apis["ann"].send(apis["ann"].session(), "slow")
    slow.until("tool_call")
    t.mcp.wait_event("fake", "sleeping")
    started = time.monotonic()
    quick = apis["bob"].send(apis["bob"].session(), "quick")
    assert quick.end() == {"status": "completed"} and quick.text() == "Got quick."
    assert time.monotonic() - started < 1.5  # well before the 3 s tool beside it ends
    assert not [n for n, _ in slow.events if n == "tool_result"]  # it was still running
    assert slow.end() == {"status": "completed"} and slow.text() == "Got slept 3.0."


# 8. the compatible dialects never run Jarvis's tools


CLIENT_TOOL = {
    "type": "function",
    "function": {
        "name": "fake__echo",  # the very name of a Jarvis tool: still the client's to run
        "description": "The client's own echo.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_compatible_dialect_hands_tool_calls_to_its_client(tooled, path):
    t = tooled()
    t.fake.push(Script(tokens=0, tool_calls=[echo("for the client")]))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "echo"}], "stream": False}
    r = requests.post(
        t.api.url + path, json=body | {"tools": [CLIENT_TOOL]}, headers=t.api.headers, timeout=HTTP_TIMEOUT
    )
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"] if path.startswith("/v1") else r.json()["message"]
    (call,) = message["tool_calls"]
    arguments = call["function"]["arguments"]
    assert call["function"]["name"] == "fake__echo"
    assert (json.loads(arguments) if isinstance(arguments, str) else arguments) == {"text": "for the client"}
    (seen,) = t.fake.chat_calls()  # one model call: no tool ran, no second step
    assert [tool["function"]["name"] for tool in seen.body["tools"]] == ["fake__echo"]
    assert seen.body["tools"][0]["function"]["description"] == "The client's own echo."
    assert t.mcp.events("fake") == [] and tagged(t.mcp.tag) == []  # the MCP server never even started


# 9. a real MCP server from PyPI


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_real_mcp_server_time_answers_through_an_answer(tooled):
    program = mcp_server_time()
    t = tooled(
        servers={"time": {"command": program, "args": ["--local-timezone=UTC"]}}, tool_start_timeout_s=60.0
    )
    t.fake.push(
        Script(tokens=0, tool_calls=[{"name": "time__get_current_time", "arguments": {"timezone": "UTC"}}]),
        Script(tokens=["It is now."]),
    )
    sid = t.api.session()
    sse = t.api.send(sid, "what time is it in UTC?")
    assert sse.end() == {"status": "completed"}
    (result,) = [d for n, d in sse.events if n == "tool_result"]
    assert result["is_error"] is False and '"timezone": "UTC"' in result["content"]
    first, second = t.fake.chat_calls()
    assert "time__get_current_time" in {tool["function"]["name"] for tool in first.body["tools"]}
    assert second.body["messages"][-1]["content"] == result["content"]
    assert t.api.messages(sid)[-1]["meta"]["tool_calls"][0]["result"] == result


# what an answer leaves for the next prompt's context


def test_tool_calls_cut_by_the_token_limit_never_go_back_unanswered(tooled):
    # the model asked for a tool, then hit its token limit: the answer ends as length, a status
    # the next prompt's context carries on, so its calls must go back with results
    t = tooled()
    t.fake.push(Script(tokens=["Let me look. "], tool_calls=[echo("cut")], done_reason="length"))
    sid = t.api.session()
    sse = t.api.send(sid, "look")
    assert sse.end() == {"status": "length"}
    (call,) = [d for n, d in sse.events if n == "tool_call"]
    (result,) = [d for n, d in sse.events if n == "tool_result"]  # the page shows why it never ran
    assert result["id"] == call["id"] and result["is_error"] is True and "not run" in result["content"]
    assert t.api.messages(sid)[-1]["meta"]["tool_calls"][0]["result"] == result
    t.fake.push(Script(tokens=["ok"]))
    assert t.api.send(sid, "go on").end() == {"status": "completed"}
    context = t.fake.chat_calls()[-1].body["messages"]
    assert context[0]["content"] == "look" and context[-1]["content"] == "go on"
    assert unanswered(context) == []


# the answer's own bounds hold across its steps


@pytest.mark.timeout(40)
def test_a_tool_call_past_the_tool_timeout_is_an_error_the_model_reads(tooled):
    # would hang (for 30 s): an answer waiting for a tool past JARVIS_TOOL_TIMEOUT
    t = tooled(tool_timeout_s=1.0)
    t.fake.push(Script(tokens=0, tool_calls=[sleep(30)]), Script(tokens=["Too slow."]))
    sse = t.api.send(t.api.session(), "sleep")
    assert sse.end() == {"status": "completed"} and sse.text() == "Too slow."
    (result,) = [d for n, d in sse.events if n == "tool_result"]
    assert result["is_error"] is True and "timed out after 1 s" in result["content"]
    assert 1000 <= result["duration_ms"] < 2500
    assert t.fake.chat_calls()[1].body["messages"][-1]["content"] == result["content"]
    t.mcp.wait_event("fake", "cancelled")  # the server was told to give the call up


@pytest.mark.timeout(40)
def test_the_total_timeout_bounds_the_whole_answer_not_each_model_call(tooled):
    # would hang (for 8 s, then on through up to JARVIS_AGENT_MAX_STEPS model calls and tools):
    # JARVIS_TOTAL_TIMEOUT ("longest an answer may stream") counted per model call, not per answer
    t = tooled(total_timeout_s=2.0, tool_timeout_s=8.0)
    t.fake.push(Script(tokens=["Waiting. "], tool_calls=[sleep(30)]), Script(tokens=["Done."]))
    sid = t.api.session()
    started = time.monotonic()
    sse = t.api.send(sid, "sleep")
    end = sse.end()
    took = time.monotonic() - started
    assert end["status"] == "timeout" and end["error"]["code"] == "total_timeout", end
    assert took < 2.0 + 1.0, f"the answer ended after {took:.1f} s"
    assert len(t.fake.chat_calls()) == 1  # no model call after the deadline
    t.mcp.wait_event("fake", "cancelled")
    answer = t.api.messages(sid)[-1]
    assert answer["status"] == "timeout" and answer["content"] == "Waiting. "


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
def test_a_tool_round_over_an_openai_compatible_backend(tooled):
    t = tooled()
    t.fake.push(Script(tokens=0, tool_calls=[echo("hi")]), Script(tokens=["Said hi."]))
    sid = t.api.session()
    sse = t.api.send(sid, "echo")
    assert sse.end() == {"status": "completed"} and sse.text() == "Said hi."
    *_, asked, told = t.fake.chat_calls()[1].body["messages"]
    (call,) = asked["tool_calls"]
    assert call["function"]["name"] == "fake__echo" and json.loads(call["function"]["arguments"]) == {
        "text": "hi"
    }
    assert (told["role"], told["tool_call_id"], told["content"]) == ("tool", call["id"], "hi")
    t.fake.push(Script(tokens=["ok"]))
    assert t.api.send(sid, "again").end() == {"status": "completed"}
    context = t.fake.chat_calls()[-1].body["messages"]
    assert [m["role"] for m in context] == ["user", "assistant", "tool", "assistant", "user"]
    assert unanswered(context) == [] and context[2]["tool_call_id"] == context[1]["tool_calls"][0]["id"]


@pytest.mark.timeout(30)
def test_a_rejoin_replays_the_tool_events(tooled):
    # would hang: a rejoined page waiting for a tool call it never sees replayed
    t = tooled(detach_grace_s=10.0)
    t.fake.push(Script(tokens=0, tool_calls=[sleep(1)]), Script(tokens=["Rested."]))
    sid = t.api.session()
    sse = t.api.send(sid, "rest")
    call = sse.until("tool_call")
    sse.close()  # the page reloads; the answer goes on for the grace
    again = t.api.attach(sid)
    assert again.status_code == 200
    assert again.end() == {"status": "completed"}
    assert [d for n, d in again.events if n == "tool_call"] == [call]
    (result,) = [d for n, d in again.events if n == "tool_result"]
    assert result["id"] == call["id"] and result["content"] == "slept 1.0"
    ids = [i for (n, _), i in zip(again.events, again.ids, strict=True) if n in ("tool_call", "tool_result")]
    assert all(ids) and len(set(ids)) == 2


def test_a_tool_the_chat_does_not_offer_is_never_run(tooled):
    # the chat's settings are the user's choice: a model that calls another configured tool anyway
    # (made up, or told to by a web page it read) gets an error result, and the tool never runs
    t = tooled()
    sid = t.api.session()
    patch_settings(t.api, sid, {"tools": ["fake__echo"]})
    t.fake.push(Script(tokens=0, tool_calls=[sleep(0.01)]), Script(tokens=["Not allowed."]))
    sse = t.api.send(sid, "sleep")
    assert sse.end() == {"status": "completed"}
    (result,) = [d for n, d in sse.events if n == "tool_result"]
    assert result["is_error"] is True and "fake__sleep" in result["content"]
    assert t.fake.chat_calls()[1].body["messages"][-1]["content"] == result["content"]
    assert "sleeping" not in [e["event"] for e in t.mcp.events("fake")]
