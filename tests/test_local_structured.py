"""The embedded model's structured output and forced tool calls: a grammar holds the answer.

With the stand-in model: the grammar reaches ``create_completion``, a forced call
comes out as one ``ToolCall``, and ``check`` honours or refuses each field, named.
With the real SmolLM2: its answer to a schema parses and validates, and so do a
forced call's arguments, and Stop still ends an answer held to a grammar at once.
"""

from __future__ import annotations

import json
import time

import pytest

from jarvis.cancel import CancelScope
from jarvis.conversation import Chat, Image, Tool, ToolCall
from jarvis.errors import Unsupported, UpstreamStreamError
from jarvis.upstream import Done, Options, Progress, grammar
from tests.test_local import HELLO, FakeLlama, Reader, make, real_model
from tests.test_local import fake_abort as fake_abort  # noqa: F401  (a fixture)
from tests.test_local import real as real  # noqa: F401  (a fixture)

llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
pytestmark = [pytest.mark.timeout(15), pytest.mark.usefixtures("fake_abort")]

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
    },
    "required": ["city", "country"],
}
WEATHER = Tool(
    "get_weather",
    "The weather now in a city",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
)
TIME = Tool(
    "get_time", "The time now in a city", {"type": "object", "properties": {"city": {"type": "string"}}}
)


class Recording(FakeLlama):
    """Records the sampling arguments of every generation; its last chunk says why it ended,
    as llama-cpp-python's does."""

    def create_completion(self, tokens, max_tokens, stream, **sampling):
        self.sampling = [*getattr(self, "sampling", []), sampling]
        return super().create_completion(tokens, max_tokens, stream, **sampling)

    def _run(self, max_tokens):
        chunks = list(super()._run(max_tokens))
        if chunks:
            chunks[-1]["choices"][0]["finish_reason"] = "length" if len(self.answer) > max_tokens else "stop"
        yield from chunks


def items_of(up, chat: Chat) -> list:
    return [i for i in up.stream_chat(chat, CancelScope()) if not isinstance(i, Progress)]


def test_a_json_format_reaches_the_model_as_its_json_grammar():
    fake = Recording(answer=['{"a"', ": 1}"])
    up = make(fake)
    assert items_of(up, Chat("", HELLO, format="json"))[:2] == ['{"a"', ": 1}"]
    assert fake.sampling[0]["grammar"]._grammar == llama_grammar.JSON_GBNF
    items_of(up, Chat("", HELLO))
    assert "grammar" not in fake.sampling[1]  # free text stays free


def test_a_schema_format_reaches_the_model_as_its_grammar_built_once():
    fake = Recording(answer=['{"city": "Paris", "country": "France"}'])
    up = make(fake)
    items_of(up, Chat("", HELLO, format=CITY))
    items_of(up, Chat("", HELLO, format=json.loads(json.dumps(CITY))))  # the same schema, sent again
    first, second = (s["grammar"] for s in fake.sampling)
    assert first._grammar == llama_grammar.json_schema_to_gbnf(json.dumps(CITY))
    assert first is second


def test_a_required_tool_call_comes_out_as_one_tool_call():
    fake = Recording(answer=['{"city": ', '"Paris", "unit": "celsius"}'])
    up = make(fake)
    items = items_of(up, Chat("", HELLO, tools=(WEATHER,), tool_choice="required"))
    call, done = items
    assert isinstance(call, ToolCall) and isinstance(done, Done)
    assert call.name == "get_weather" and call.args() == {"city": "Paris", "unit": "celsius"}
    assert call.id.startswith("call_")
    grammar_text = fake.sampling[0]["grammar"]._grammar
    assert grammar_text == llama_grammar.json_schema_to_gbnf(
        json.dumps(WEATHER.parameters, separators=(",", ":"))
    )
    assert "get_weather: The weather now in a city" in fake.prompts[0]  # the model is told what to call


def test_a_named_function_is_the_one_called():
    fake = Recording(answer=['{"city": "Oslo"}'])
    up = make(fake)
    chat = Chat("", HELLO, tools=(WEATHER, TIME), tool_choice="required", tool_name="get_time")
    call = items_of(up, chat)[0]
    assert call.name == "get_time" and call.args() == {"city": "Oslo"}
    assert "get_weather" not in fake.prompts[0]


def test_a_call_required_from_several_tools_names_its_function_and_holds_its_arguments():
    fake = Recording(answer=['{"name": "get_time", "arguments": {"city": "Lima"}}'])
    up = make(fake)
    call = items_of(up, Chat("", HELLO, tools=(WEATHER, TIME), tool_choice="required"))[0]
    assert call.name == "get_time" and call.args() == {"city": "Lima"}
    held = fake.sampling[0]["grammar"]._grammar
    # each function's arguments are held to its own parameters, not to any object
    assert '"\\"get_weather\\""' in held and '"\\"celsius\\""' in held, held


def test_a_forced_call_cut_by_the_token_limit_is_an_error_not_half_a_call():
    fake = Recording(answer=['{"city": ', '"Par', 'is", "unit": "celsius"}'])
    up = make(fake)
    chat = Chat("", HELLO, Options(max_tokens=2), tools=(WEATHER,), tool_choice="required")
    with pytest.raises(UpstreamStreamError, match="cut at 2 tokens"):
        items_of(up, chat)
    fake.answer = ["ok"]
    assert items_of(up, Chat("", HELLO))[0] == "ok"  # and the slot is free


def test_a_tool_call_and_its_result_reach_the_prompt():
    # before: the assistant's turn that made the call was rendered empty
    fake = Recording()
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    history = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_1", "name": "get_weather"},
    ]
    items_of(make(fake), Chat("", history))
    called = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert fake.prompts[0] == f"<user>weather in Paris?<assistant>{called}<tool>18 C, sunny<assistant>"


def test_stop_while_an_answer_is_held_to_a_grammar_aborts_the_decode():
    # would hang: for the held decode's 10 s guard, were the grammar to bypass the abort callback
    fake = FakeLlama(hold=True)
    reader = Reader(make(fake), chat=Chat("", HELLO, format=CITY))
    assert fake.decoding.wait(5)
    reader.cancel.cancel("stopped")
    reader.join()
    assert reader.items == [] and reader.error is None and fake.active == 0


def test_penalties_reach_the_model():
    # before: frequency_penalty and presence_penalty were dropped without a word
    fake = Recording()
    items_of(make(fake), Chat("", HELLO, Options(frequency_penalty=0.5, presence_penalty=0.25)))
    assert fake.sampling[0]["frequency_penalty"] == 0.5 and fake.sampling[0]["presence_penalty"] == 0.25


def test_check_honours_formats_and_forced_calls():
    up = make(FakeLlama())
    for chat in (
        Chat("", HELLO, format="json"),
        Chat("", HELLO, format=CITY),
        Chat("", HELLO, tools=(WEATHER,), tool_choice="required"),
        Chat("", HELLO, tools=(WEATHER, TIME), tool_choice="required", tool_name="get_time"),
        Chat("", HELLO, tools=(WEATHER,), tool_choice="none"),  # offered, not to be called: plain text
        Chat("", HELLO, Options(temperature=0.1, top_p=0.5, seed=1, frequency_penalty=0.1)),
    ):
        up.check(chat)


PNG = Image("image/png", b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    "chat, field, says",
    [
        (
            Chat("", HELLO, tools=(WEATHER,)),
            "tools",
            'tool_choice requires one ("required" or a function named)',
        ),
        (Chat("", [{"role": "user", "content": "what is this?", "images": [PNG]}]), "images", "images"),
        (Chat("", HELLO, think=True), "think", "think"),
        (Chat("", HELLO, keep_alive="5m"), "keep_alive", "stays loaded"),
        (Chat("", HELLO, Options(extra={"num_ctx": 8192})), "options.num_ctx", "num_ctx"),
        (Chat("", HELLO, format={"enum": []}), "format", "cannot hold an answer to this schema"),
        (Chat("", HELLO, format={"type": "string", "pattern": "abc"}), "format", "Pattern must start"),
        (Chat("", HELLO, format={"$ref": "https://example.com/s.json"}), "format", "remote"),
        (Chat("", HELLO, format="yaml"), "format", "JSON schema"),
        (Chat("", HELLO, tools=(Tool("f", "", {"enum": []}),), tool_choice="required"), "tools", "schema"),
        (Chat("", HELLO, tools=(WEATHER,), tool_choice="required", tool_name="nope"), "tool_choice", "nope"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_check_refuses_what_the_embedded_model_cannot_honour_naming_the_field(chat, field, says):
    with pytest.raises(Unsupported) as refused:
        make(FakeLlama()).check(chat)
    assert refused.value.field == field and says in refused.value.message


def test_a_schema_llama_cpp_cannot_parse_never_reaches_the_model():
    # llama.cpp ends the process on a grammar it cannot parse (a self-referencing schema makes one)
    fake = Recording()
    up = make(fake)
    looped = {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}}
    with pytest.raises(UpstreamStreamError, match="cannot hold an answer"):
        items_of(up, Chat("", HELLO, format=looped))
    assert not hasattr(fake, "sampling")
    assert items_of(up, Chat("", HELLO))[:3] == ["Hel", "lo", "!"]  # and the slot is free


def test_grammar_of_no_format_is_none():
    assert grammar.of(None) is None


# the real model


def valid(value, schema: dict) -> bool:
    """``value`` against the subset of JSON schema these tests use (type, properties, required,
    enum, maxLength)."""
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    types = {"object": dict, "string": str, "integer": int, "number": (int, float), "boolean": bool}
    if kind is not None and not isinstance(value, types[kind]):
        return False
    if kind == "string" and len(value) > schema.get("maxLength", len(value)):
        return False
    if kind == "object":
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", ())):
            return False
        return all(valid(v, props[k]) for k, v in value.items() if k in props)
    return True


def test_the_validator_says_no():
    assert not valid({"city": "Paris"}, CITY) and not valid({"city": 1, "country": "x"}, CITY)
    assert not valid({"city": "x" * 41, "country": "x"}, CITY) and valid({"city": "a", "country": "b"}, CITY)
    assert not valid({"city": "a", "unit": "kelvin"}, WEATHER.parameters)


GREEDY = Options(temperature=0.0, max_tokens=120)


@real_model
@pytest.mark.timeout(60)
def test_real_answer_to_a_json_schema_parses_and_validates(real):
    question = [{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}]
    items = items_of(real.up, Chat("", question, GREEDY, format=CITY))
    text = "".join(i for i in items if isinstance(i, str))
    assert items[-1].reason == "stop", text  # the grammar ended it, not the token limit
    assert valid(json.loads(text), CITY), text
    free = items_of(real.up, Chat("", question, GREEDY, format="json"))
    assert isinstance(json.loads("".join(i for i in free if isinstance(i, str))), dict)


@real_model
@pytest.mark.timeout(60)
def test_real_forced_tool_call_has_arguments_that_validate(real):
    question = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
    for chat in (
        Chat("", question, GREEDY, tools=(WEATHER,), tool_choice="required"),
        Chat("", question, GREEDY, tools=(TIME, WEATHER), tool_choice="required", tool_name="get_weather"),
        Chat("", question, GREEDY, tools=(TIME, WEATHER), tool_choice="required"),  # the model chooses
    ):
        items = items_of(real.up, chat)
        calls = [i for i in items if isinstance(i, ToolCall)]
        assert [c.name for c in calls] == ["get_weather"], items
        assert not [i for i in items if isinstance(i, str)]
        assert valid(json.loads(calls[0].arguments), WEATHER.parameters), calls[0].arguments


@real_model
@pytest.mark.timeout(60)
def test_real_stop_during_an_answer_held_to_a_schema_ends_within_50ms(real):
    chat = Chat(
        "", [{"role": "user", "content": "Describe Paris in JSON."}], Options(max_tokens=400), format="json"
    )
    reader = Reader(real.up, chat=chat)
    assert reader.wait_for(lambda r: r.items, timeout=20)
    stopped = time.monotonic()
    reader.cancel.cancel("stopped")
    reader.join()
    assert reader.ended_at - stopped < 0.05
    assert reader.error is None and reader.text.startswith("{")
