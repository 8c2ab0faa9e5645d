"""A tool call forced through structured output, for backends that cannot force one themselves.

Ollama and the embedded model have no ``tool_choice``; both can hold an answer
to a JSON schema. A request that must call a tool ("required", or a function
named) is sent with ``call_schema`` as its format, no tools, and a system note
naming the function(s) (the model sees no tools otherwise), and its JSON answer
comes back as one ``ToolCall`` instead of text. Nor can they be told to call at
most one tool (``parallel_tool_calls: false``): the calls past the first are
dropped here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from ..conversation import Chat, Message, Tool, ToolCall, call_schema, forced_call, forced_tools
from ..errors import UpstreamStreamError
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
