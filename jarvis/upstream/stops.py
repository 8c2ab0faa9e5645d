"""Stop sequences, matched by Jarvis on the answer's text, for every backend alike.

Ollama and OpenAI-compatible servers end at a stop sequence, strip it and say only "stop": a
client could not tell it from the model's own end (Anthropic's ``stop_reason: "stop_sequence"``
names the sequence). So the backend is sent none (``upstream_chat``), and ``StopMatcher`` reads
the text as it streams: it holds back only a tail that may begin a sequence, gives out the text
up to the first match, and says which sequence matched; the worker then ends the answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from ..conversation import Chat, Thinking, ToolCall
from . import Done, Item, Meta

STOP_SEQUENCE = "stop_sequence"  # the cancel reason of an answer ended at a stop sequence


def upstream_chat(chat: Chat) -> Chat:
    """``chat`` as the backend is to see it: without stop sequences, which Jarvis matches itself."""
    if not chat.options.stop:
        return chat
    return dataclasses.replace(chat, options=dataclasses.replace(chat.options, stop=()))


def cut(items: Iterable[Item], matcher: StopMatcher) -> Iterable[Item]:
    """``items`` with the text cut at the first stop sequence: the text before it, then a ``Meta``
    naming it (the worker ends the answer there); anything after it is dropped."""
    return items if not matcher.stops else _cut(items, matcher)


def _cut(items: Iterable[Item], matcher: StopMatcher) -> Iterator[Item]:
    for item in items:
        if matcher.matched is not None:
            continue
        if isinstance(item, str):
            if text := matcher.feed(item):
                yield text
            if matcher.matched is not None:
                yield Meta({STOP_SEQUENCE: matcher.matched})
            continue
        if matcher.held and isinstance(item, (Thinking, ToolCall, Done)):
            yield matcher.flush()  # nothing can match across a call, thinking, or the end
        yield item
    if matcher.held:
        yield matcher.flush()


class StopMatcher:
    """The answer's text with the first stop sequence cut off: ``feed`` each chunk, ``flush`` before
    anything that is not text and at the end; ``matched`` names the sequence once one matched."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""  # a tail that may begin a stop sequence
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """The text that can be given out now (maybe ""); after a match, the text before it."""
        if not self.stops:
            return text
        text, self.held = self.held + text, ""
        found = [(at, i) for i, s in enumerate(self.stops) if (at := text.find(s)) >= 0]
        if found:
            at, i = min(found)  # the earliest match; at one place, the sequence listed first
            self.matched = self.stops[i]
            return text[:at]
        keep = self._partial(text)
        if keep:
            text, self.held = text[:-keep], text[-keep:]
        return text

    def flush(self) -> str:
        """What was held back: no sequence can match across what comes next."""
        held, self.held = self.held, ""
        return held

    def _partial(self, text: str) -> int:
        """The length of the longest tail of ``text`` that begins a stop sequence."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest
