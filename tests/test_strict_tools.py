"""``strict: true`` on a function tool is honoured: a call's arguments must match the tool's schema.

The OpenAI Agents SDK sends ``strict`` on every tool, on chat completions and on Responses; Anthropic's
tools have it too. No backend behind Jarvis promises it, so Jarvis holds the calls to the schema
itself: a forced call is asked for as the schema (``upstream/forced.py``), and every call of a strict
tool is checked against its schema before it is shown. A call that does not match ends the answer
with an error in the dialect's shape (code ``tool_arguments_invalid``), never shown as a call; a
schema Jarvis cannot check is a 400 naming it.
"""

from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest
import requests

from tests.conftest import HTTP_TIMEOUT, both_upstreams, wait_for
from tests.fake_ollama import Script
from tests.samples import ALL, CALL

HELLO = [{"role": "user", "content": "weather in Paris?"}]
PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
BAD_CALL = {"name": "get_weather", "arguments": {"town": "Paris"}}  # "city" missing, "town" unknown


def chat_tool(strict: bool = True) -> dict:
    return {
        "type": "function",
        "function": {"name": "get_weather", "parameters": PARAMETERS, "strict": strict},
    }


RESPONSES_TOOL = {"type": "function", "name": "get_weather", "parameters": PARAMETERS, "strict": True}
ANTHROPIC_TOOL = {"name": "get_weather", "input_schema": PARAMETERS, "strict": True}


@pytest.fixture
def served(make_served):
    """A server whose models can do everything (on either upstream); its clients: oai and claude."""
    return make_served(openai_capabilities=ALL)


@both_upstreams
@pytest.mark.parametrize("stream", [False, True])
def test_a_strict_tools_matching_call_comes_back_on_chat_completions(served, oai, stream):
    served.fake.script(tokens=0, tool_calls=[CALL])
    kwargs = {"model": "tiny", "messages": HELLO, "tools": [chat_tool()]}
    if stream:
        chunks = list(oai.chat.completions.create(stream=True, **kwargs))
        calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
        (call,) = [c[0].function for c in calls]
    else:
        (call,) = [c.function for c in oai.chat.completions.create(**kwargs).choices[0].message.tool_calls]
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
    wait_for(served.idle, what="slot released")


@both_upstreams
@pytest.mark.parametrize("stream", [False, True])
def test_a_strict_tools_call_that_does_not_match_is_an_error_never_a_call(served, oai, stream):
    served.fake.script(tokens=0, tool_calls=[BAD_CALL])
    kwargs = {"model": "tiny", "messages": HELLO, "tools": [chat_tool()]}
    with pytest.raises(openai.APIError) as caught:
        if stream:
            for chunk in oai.chat.completions.create(stream=True, **kwargs):
                assert not (chunk.choices and chunk.choices[0].delta.tool_calls), "an invalid call was shown"
        else:
            oai.chat.completions.create(**kwargs)
    assert caught.value.code == "tool_arguments_invalid", caught.value
    assert "city" in caught.value.message
    wait_for(served.idle, what="slot released")


def test_a_call_of_a_tool_that_is_not_strict_is_passed_on_as_the_model_wrote_it(served, oai):
    served.fake.script(tokens=0, tool_calls=[BAD_CALL])
    answer = oai.chat.completions.create(model="tiny", messages=HELLO, tools=[chat_tool(strict=False)])
    assert answer.choices[0].message.tool_calls[0].function.arguments == '{"town": "Paris"}'


def finished(api, stream: bool, **kwargs):
    """What ``api`` (``oai.responses`` or ``claude.messages``) answers, streamed or in one piece."""
    if not stream:
        return api.create(**kwargs)
    with api.stream(**kwargs) as s:
        return s.get_final_response() if hasattr(s, "get_final_response") else s.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
def test_responses_strict_tools_are_held_to_their_schema(served, oai, stream):
    served.fake.script(tokens=0, tool_calls=[CALL])
    kwargs = {"model": "tiny", "input": "weather in Paris?", "tools": [RESPONSES_TOOL]}
    response = finished(oai.responses, stream, **kwargs)
    (item,) = response.output
    assert (item.type, item.name, item.arguments) == ("function_call", "get_weather", '{"city": "Paris"}')
    served.fake.script(tokens=0, tool_calls=[BAD_CALL])
    with pytest.raises(openai.APIError) as caught:
        finished(oai.responses, stream, **kwargs)
    assert "tool_arguments_invalid" in str(caught.value) or caught.value.code == "tool_arguments_invalid"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_strict_tools_are_held_to_their_schema(served, claude, stream):
    served.fake.script(tokens=0, tool_calls=[CALL])
    kwargs = {"model": "tiny", "max_tokens": 100, "messages": HELLO, "tools": [ANTHROPIC_TOOL]}
    message = finished(claude.messages, stream, **kwargs)
    (block,) = [b for b in message.content if b.type == "tool_use"]
    assert block.input == {"city": "Paris"} and message.stop_reason == "tool_use"
    served.fake.script(tokens=0, tool_calls=[BAD_CALL])
    with pytest.raises(anthropic.APIError) as caught:
        finished(claude.messages, stream, **kwargs)
    assert "city" in str(caught.value)


def test_a_forced_strict_call_is_asked_of_ollama_as_the_schema(served, oai):
    served.fake.script(tokens=1)  # answered with an instance of the format, as Ollama's grammar makes one
    answer = oai.chat.completions.create(
        model="tiny", messages=HELLO, tools=[chat_tool()], tool_choice="required"
    )
    assert served.fake.chat_calls()[0].body["format"] == PARAMETERS  # the grammar holds the call
    assert answer.choices[0].message.tool_calls[0].function.name == "get_weather"


@pytest.mark.parametrize(
    "parameters, says",
    [
        ({"type": "objekt"}, "is not valid under any of the given schemas"),
        ({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}, "$ref"),
    ],
)
def test_a_strict_schema_jarvis_cannot_check_is_a_400_naming_it(served, parameters, says):
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters, "strict": True}}
    body = {"model": "tiny", "messages": HELLO, "tools": [tool]}
    r = requests.post(
        served.url + "/v1/chat/completions", json=body, headers=served.auth, timeout=HTTP_TIMEOUT
    )
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "tools[0].function.parameters", error
    assert says in error["message"]
    assert served.fake.chat_calls() == []


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
def test_the_openai_agents_sdk_runs_a_strict_tool_through_jarvis(served, api):
    agents = pytest.importorskip("agents")  # openai-agents: not among the test extras
    served.fake.push(Script(tokens=0, tool_calls=[CALL]), Script(tokens=["It is sunny."]))
    seen = []

    @agents.function_tool  # strict by default: the SDK sends "strict": true with the schema
    async def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return "sunny"

    client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=served.token, max_retries=0, timeout=5)
    agents.set_tracing_disabled(True)
    model = (
        agents.OpenAIChatCompletionsModel("tiny", client)
        if api == "chat_completions"
        else agents.OpenAIResponsesModel("tiny", client)
    )
    agent = agents.Agent(name="weather", instructions="be brief", tools=[get_weather], model=model)

    async def run():
        async with client:  # closed, and asyncio.run joins its executor: no thread outlives the test
            return await agents.Runner.run(agent, "weather in Paris?", max_turns=3)

    result = asyncio.run(run())
    assert seen == ["Paris"] and result.final_output == "It is sunny."
    first = served.fake.chat_calls()[0].body
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
