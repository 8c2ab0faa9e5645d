"""A tool call forced through structured output, for backends that cannot force one themselves.

Ollama and the embedded model have no ``tool_choice``; both can hold an answer
to a JSON schema. A request that must call a tool ("required", or a function
named) is sent with ``call_schema`` as its format, no tools, and a system note
naming the function(s) (the model sees no tools otherwise), and its JSON answer
comes back as one ``ToolCall`` instead of text. Nor can they be told to call at
most one tool (``parallel_tool_calls: false``): the calls past the first are
dropped here.

A strict tool (``Tool.strict``) promises that its calls' arguments match its schema, which no
backend here promises: ``strict`` checks each such call against its schema (``jsonschema``)
before it is shown, and ends the answer with ``tool_arguments_invalid`` where one does not match.
``schema_problem`` says, before the answer starts, why a schema cannot be checked.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator

from ..conversation import Chat, Message, Tool, ToolCall, call_schema, forced_call, forced_tools
from ..errors import UpstreamError, UpstreamStreamError
from . import Done, Item


def prepare(chat: Chat) -> Chat:
    """``chat`` as the backend is to see it: a forced call asked for as a format, without tools."""
    tools = forced_tools(chat)
    if not tools:
        return chat
    return dataclasses.replace(
        chat,
        messages=_hint(chat.messages, tools),
        tools=(),
        tool_choice="auto",
        tool_name=None,
        format=call_schema(tools),
    )


def answer(chat: Chat, items: Iterable[Item]) -> Iterator[Item]:
    """The backend's items, with a forced call's JSON text turned into the call it makes, and
    calls past the first dropped when the client asked for one at most (``parallel_tool_calls``)."""
    tools = forced_tools(chat)
    if not tools:
        yield from (items if chat.parallel_tool_calls else _one_call(items))
        return
    texts: list[str] = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
            continue
        if isinstance(item, Done):
            if item.reason == "length":  # half its arguments would be no call at all
                cut = f"the tool call was cut at {item.completion_tokens} tokens"
                raise UpstreamStreamError(cut + ", before its arguments were whole")
            yield forced_call(tools, "".join(texts))
        yield item


def _one_call(items: Iterable[Item]) -> Iterator[Item]:
    called = False
    for item in items:
        if isinstance(item, ToolCall):
            if called:
                continue
            called = True
        yield item


def _hint(messages: list[Message], tools: tuple[Tool, ...]) -> list[Message]:
    """``messages`` with a system note naming the tool to call: the format holds the call's shape,
    the note tells the model what the call is for."""
    lines = [f"- {t.name}: {t.description}" if t.description else f"- {t.name}" for t in tools]
    what = "its arguments" if len(tools) == 1 else "the function's name and its arguments"
    note = f"Call {'this function' if len(tools) == 1 else 'one of these functions'}:\n" + "\n".join(lines)
    note += f"\nAnswer with {what} as a JSON object, taken from the user's words."
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def strict(chat: Chat, items: Iterable[Item]) -> Iterable[Item]:
    """``items``, each call of a strict tool checked against the tool's schema first: one that does
    not match ends the answer (``tool_arguments_invalid``) and is never shown as a call."""
    tools = {t.name: t for t in chat.tools}
    if not any(t.strict for t in chat.tools):
        return items
    return _checked(tools, items)


def _checked(tools: dict[str, Tool], items: Iterable[Item]) -> Iterator[Item]:
    for item in items:
        if isinstance(item, ToolCall):
            tool = tools.get(item.name)
            problem = "it names no tool offered" if tool is None else _mismatch(tool, item.arguments)
            if problem is not None:  # a tool that is not strict has none (_mismatch)
                raise UpstreamError(
                    f"the model's call of {item.name!r} does not match its strict schema: {problem}",
                    code="tool_arguments_invalid",
                )
        yield item


def _mismatch(tool: Tool, arguments: str) -> str | None:
    """Why ``arguments`` (JSON text) do not match ``tool``'s schema; None when they do."""
    if not tool.strict:
        return None
    try:
        found = json.loads(arguments or "{}")
    except ValueError:
        return "its arguments are not JSON"
    from jsonschema import exceptions, validators  # only strict tools pay for the import
    from referencing.exceptions import Unresolvable

    validator = validators.validator_for(tool.parameters)(tool.parameters)
    try:
        error = exceptions.best_match(validator.iter_errors(found))
    except Unresolvable as e:  # a local $ref that names nothing
        return f"its schema's $ref cannot be resolved: {e}"
    if error is None:
        return None
    where = "".join(f"[{p!r}]" for p in error.absolute_path)
    return f"arguments{where}: {error.message}"


def schema_problem(schema: dict) -> str | None:
    """Why Jarvis cannot check calls against ``schema`` (not a JSON schema, or a $ref to another
    document, which Jarvis would have to fetch); None when it can."""
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as e:
        return f"it is not a valid JSON schema: {e.message}"
    refs = list(_refs(schema))
    remote = [r for r in refs if not (isinstance(r, str) and r.startswith("#"))]
    if remote:
        return f"its $ref {remote[0]!r} is not within the schema: Jarvis fetches nothing"
    return None


def _refs(node) -> Iterator:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef"):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
