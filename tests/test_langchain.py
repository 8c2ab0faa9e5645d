"""LangChain's ``ChatOpenAI`` and ``ChatOllama`` against Jarvis: answers, ``bind_tools``,
``with_structured_output``, a tool result sent back, and thinking.

Each test drives ``jarvis`` under waitress in front of a fake upstream (the fake Ollama, and where
the feature travels to it the fake OpenAI-compatible server too) and checks both ends: what LangChain
made of the answer, and what reached the upstream.
"""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from .conftest import both_upstreams
from .samples import ALL, CALL, sent, tool_turn_sent

QUESTION = "What is the weather in Paris?"
TEXT = "tok0 tok1 tok2 tok3 tok4 "  # the fakes' default answer


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "18 °C, sunny"


class Person(BaseModel):
    """A person the answer names."""

    name: str
    age: int


def chat_openai(served, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=served.url + "/v1", api_key=served.token, model="tiny", max_retries=0, timeout=5, **kwargs
    )


def chat_ollama(served, **kwargs) -> ChatOllama:
    auth = {"headers": {"Authorization": f"Bearer {served.token}"}, "timeout": 5}
    return ChatOllama(base_url=served.url, model="tiny", client_kwargs=auth, **kwargs)


def tool_history() -> list:
    """The question, the model's call of get_weather, and the tool's result: the turn sent back."""
    return [
        HumanMessage(QUESTION),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]),
        ToolMessage("18 °C, sunny", tool_call_id="call_1"),
    ]


def answers_and_streams(served, llm) -> list:
    """``llm`` answers QUESTION whole and streamed; the upstream's chat calls, the question last in each."""
    assert llm.invoke(QUESTION).content == TEXT
    assert streamed(llm, QUESTION).content == TEXT
    calls = served.fake.chat_calls()
    assert [call.body["messages"][-1]["content"] for call in calls] == [QUESTION, QUESTION]
    return calls


def streamed(runnable, prompt):
    """The chunks of a stream added up, as LangChain's docs accumulate them."""
    whole = None
    for chunk in runnable.stream(prompt):
        whole = chunk if whole is None else whole + chunk
    return whole


# --- ChatOpenAI -----------------------------------------------------------------------------


@both_upstreams
def test_chat_openai_answers_and_streams(make_served):
    served = make_served()
    first, second = answers_and_streams(served, chat_openai(served))
    assert first.body["messages"] == second.body["messages"]


@both_upstreams
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("client", ["ChatOpenAI", "ChatOllama"])
def test_bind_tools_gives_the_models_calls(make_served, stream, client):
    served = make_served(openai_capabilities=ALL)
    served.fake.script(tokens=0, tool_calls=[CALL])
    llm = (chat_openai if client == "ChatOpenAI" else chat_ollama)(served).bind_tools([get_weather])
    answer = streamed(llm, QUESTION) if stream else llm.invoke(QUESTION)
    (call,) = answer.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"} and call["id"]
    (function,) = sent(served)["tools"]
    assert function["function"]["name"] == "get_weather"
    assert function["function"]["parameters"]["properties"] == {"city": {"type": "string"}}
    assert served.fake.chat_calls()[0].body["messages"][-1]["content"] == QUESTION


@both_upstreams
def test_chat_openai_structured_output_parses_a_model(make_served):
    # LangChain's default method sends response_format json_schema: the pydantic schema, named
    # "Person", strict
    served = make_served()
    person = chat_openai(served).with_structured_output(Person).invoke("Who is Ada?")
    assert isinstance(person, Person) and person == Person(name="x", age=1)
    body, strict = sent(served), {**Person.model_json_schema(), "additionalProperties": False}
    if served.fake.kind == "ollama":
        assert body["format"] == strict
    else:
        assert body["response_format"]["json_schema"]["schema"] == strict


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
def test_chat_openai_structured_output_keeps_name_and_strict_upstream(make_served):
    served = make_served()
    chat_openai(served).with_structured_output(Person).invoke("Who is Ada?")
    asked = sent(served)["response_format"]["json_schema"]
    assert asked["name"] == "Person" and asked["strict"] is True


def test_chat_openai_structured_output_by_a_forced_tool_call(served):
    person = chat_openai(served).with_structured_output(Person, method="function_calling").invoke("Ada?")
    assert person == Person(name="x", age=1)


def test_chat_openai_forced_tool_call_without_parallel_tool_calls(served):
    # method="function_calling" forces a call of the schema's function: Ollama has no tool_choice,
    # so Jarvis asks for an answer held to the function's parameters (parallel_tool_calls left out
    # as LangChain lets a model that lacks it)
    llm = chat_openai(served, disabled_params={"parallel_tool_calls": None})
    person = llm.with_structured_output(Person, method="function_calling").invoke("Who is Ada?")
    assert person == Person(name="x", age=1)
    body = sent(served)
    assert body["format"] == convert_to_openai_tool(Person)["function"]["parameters"]
    assert "tools" not in body


@both_upstreams
def test_chat_openai_tool_result_reaches_the_upstream_in_its_shape(make_served):
    served = make_served(openai_capabilities=ALL)
    answer = chat_openai(served).bind_tools([get_weather]).invoke(tool_history())
    assert answer.content == TEXT and answer.tool_calls == []
    assistant, result = sent(served)["messages"][1:]
    tool_turn_sent(served, assistant, result, "call_1", "18 °C, sunny")


# --- ChatOllama -----------------------------------------------------------------------------


@both_upstreams
def test_chat_ollama_answers_and_streams(make_served):
    served = make_served()
    answers_and_streams(served, chat_ollama(served))


@both_upstreams
def test_chat_ollama_tool_result_reaches_the_upstream_in_its_shape(make_served):
    served = make_served(openai_capabilities=ALL)
    assert chat_ollama(served).bind_tools([get_weather]).invoke(tool_history()).content == TEXT
    assistant, result = sent(served)["messages"][1:]
    assert result["role"] == "tool" and result["content"] == "18 °C, sunny"
    if served.fake.kind == "ollama":
        assert assistant["tool_calls"] == [{"function": CALL}]
    else:
        (call,) = assistant["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert result["tool_call_id"] == call["id"]  # a real OpenAI server refuses any other


@both_upstreams
def test_chat_ollama_structured_output_parses_a_model(make_served):
    # langchain-ollama's default method puts the pydantic schema in Ollama's format
    served = make_served()
    person = chat_ollama(served).with_structured_output(Person).invoke("Who is Ada?")
    assert person == Person(name="x", age=1)
    body = sent(served)
    if served.fake.kind == "ollama":
        assert body["format"] == Person.model_json_schema()
    else:
        assert body["response_format"]["json_schema"]["schema"] == Person.model_json_schema()


@both_upstreams
@pytest.mark.parametrize("stream", [False, True])
def test_chat_ollama_reasoning_comes_back_as_reasoning_content(make_served, stream):
    # reasoning=True is LangChain's name for Ollama's think; langchain-ollama keeps the thinking
    # out of the content, in additional_kwargs["reasoning_content"]
    served = make_served(openai_capabilities=ALL)
    served.fake.script(thinking=["Paris is ", "in France."], tokens=["Sunny."])
    llm = chat_ollama(served, reasoning=True)
    answer = streamed(llm, QUESTION) if stream else llm.invoke(QUESTION)
    assert answer.additional_kwargs["reasoning_content"] == "Paris is in France."
    assert answer.content == "Sunny."
    body = sent(served)
    assert body.get("think") is True or body.get("reasoning_effort") == "medium"
