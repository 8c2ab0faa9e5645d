"""Fitting a chat into the embedded model's context window.

A history that does not fit loses what costs the window most and tells the
least first: earlier long answers are cut to their start, then the oldest
messages go, and only then is the start of the last message cut. The system
prompt and the last message stay longest, so a short prompt ("My name is
Ada") outlives the long answers after it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .. import log
from ..errors import UpstreamStreamError
from . import Message, Meta, Progress

ANSWER_RESERVE = 512  # tokens kept free for the answer when the history is trimmed
# an earlier answer cut to its start when the history is too long: the next step before any
# message is dropped, so a short prompt ("My name is Ada") outlives the long answers after it
SHORTENED_ANSWER_CHARS = 300
SHORTENED_MARK = " […]"
CHARS_PER_TOKEN_MAX = 32


class Template(Protocol):
    def render(self, messages: Sequence[Message]) -> str: ...


@dataclass(frozen=True)
class Trim:
    """What was cut from a prompt so it fits the context window."""

    dropped_messages: int  # messages removed, oldest first
    cut_chars: int  # characters removed from the start of the last message
    prompt_tokens: int  # tokens left in the prompt
    shortened_answers: int = 0  # earlier answers cut to their start, oldest first

    @property
    def trimmed(self) -> bool:
        return bool(self.dropped_messages or self.cut_chars or self.shortened_answers)

    def fields(self) -> dict:
        """The trim as log fields."""
        return {
            "dropped_messages": self.dropped_messages,
            "cut_chars": self.cut_chars,
            "shortened_answers": self.shortened_answers,
            "prompt_tokens": self.prompt_tokens,
        }

    def meta(self) -> dict:
        """What the answer's metadata records of the trim."""
        trimmed = {"dropped_messages": self.dropped_messages, "cut_chars": self.cut_chars}
        if self.shortened_answers:
            trimmed["shortened_answers"] = self.shortened_answers
        return {"trimmed": trimmed}


def fitted(
    llama,
    template: Template,
    messages: Sequence[Message],
    n_ctx: int,
    check: Callable[[], None],
    on_trim: Callable[[str | None, Trim], None] | None,
    session: str | None,
) -> Generator[Meta | Progress, None, list[int]]:
    """The prompt's tokens, fitted to the window (the return value); says what was trimmed.

    ``check`` raises once a deadline has passed: fitting counts against the first token's."""
    tokens, trim = fit(llama, template, messages, n_ctx)
    check()
    if trim.trimmed:
        log.event("prompt_trimmed", session=session, **trim.fields())
        yield Meta(trim.meta())
    if on_trim is not None:
        on_trim(session, trim)
    yield Progress("reading", tokens=len(tokens))
    return tokens


def fit(llama, template: Template, messages: Sequence[Message], n_ctx: int) -> tuple[list[int], Trim]:
    """Tokenise the prompt so it fits: shorten the oldest long answers, then drop the oldest messages.

    The system prompt and the last message stay longest; earlier answers are cut to their
    start first, because a model's long answer costs the window far more than a prompt does.
    """
    budget = max(n_ctx - ANSWER_RESERVE, n_ctx // 2)
    head = [messages[0]] if messages[0]["role"] == "system" and len(messages) > 1 else []
    body = list(messages[len(head) :])
    skipped = _beyond_reach(body, budget)
    body = body[skipped:]

    def tokens_for(kept: list[Message]) -> list[int]:
        return _tokenize(llama, template.render(kept))

    def fits(kept: list[Message]) -> bool:
        return len(tokens_for(kept)) <= budget

    tokens = tokens_for(head + body)
    if len(tokens) <= budget:
        return tokens, Trim(skipped, 0, len(tokens))
    long = [i for i, m in enumerate(body[:-1]) if _shortens(m)]
    # fewest shortened answers, oldest first, that fit: bisect, each try renders the whole prompt
    short = long[: _fewest(len(long), lambda k: fits(head + _shortened(body, long[:k])))]
    body = _shortened(body, short)
    # then the fewest dropped messages, oldest first, that fit
    dropped = _fewest(len(body) - 1, lambda k: fits(head + body[k:]))
    tokens = tokens_for(head + body[dropped:])
    if len(tokens) <= budget:
        kept_short = sum(1 for i in short if i >= dropped)
        return tokens, Trim(skipped + dropped, 0, len(tokens), kept_short)
    # the last message alone is too long: drop the system prompt, then cut its start
    last = body[-1]
    content = last["content"]

    def tail(cut: int) -> list[Message]:
        return [{**last, "content": content[cut:]}]

    cut = _fewest(len(content), lambda c: fits(tail(c)))
    tokens = tokens_for(tail(cut))
    if len(tokens) > budget:
        raise UpstreamStreamError(f"the chat template alone does not fit in {n_ctx} tokens")
    return tokens, Trim(len(head) + skipped + len(body) - 1, cut, len(tokens))


def _beyond_reach(body: list[Message], budget: int) -> int:
    """How many of the oldest messages cannot fit even shortened, counted before tokenising:
    text averages 3-5 characters a token, so CHARS_PER_TOKEN_MAX characters a token is a
    generous bound."""
    chars = 0
    for first in range(len(body) - 1, 0, -1):
        m = body[first]
        chars += len(_shorten(m["content"]) if _shortens(m) and first < len(body) - 1 else m["content"])
        if chars > budget * CHARS_PER_TOKEN_MAX:
            return first
    return 0


def _fewest(most: int, fits: Callable[[int], bool]) -> int:
    """The smallest ``k`` in 0..most for which ``fits(k)``, by bisection (``most`` when none fits)."""
    low, high = 0, most
    while low < high:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid + 1
    return low


def _shortened(body: list[Message], indices: list[int]) -> list[Message]:
    cut = set(indices)
    return [{**m, "content": _shorten(m["content"])} if i in cut else m for i, m in enumerate(body)]


def _shortens(message: Message) -> bool:
    long = len(message["content"]) > SHORTENED_ANSWER_CHARS + len(SHORTENED_MARK)
    return message["role"] == "assistant" and long


def _shorten(text: str) -> str:
    """An earlier answer's start, marked as cut: enough for the model to know what it said."""
    return text[:SHORTENED_ANSWER_CHARS].rstrip() + SHORTENED_MARK


def _tokenize(llama, prompt: str) -> list[int]:
    tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    bos = llama.token_bos()
    if len(tokens) > 1 and tokens[0] == tokens[1] == bos:  # the template wrote its own BOS too
        tokens = tokens[1:]
    return tokens
