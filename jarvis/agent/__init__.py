"""Every answer an agent task: the model may call tools, Jarvis runs them and lets it go on.

``Agent`` is an ``Upstream`` around the real one, so an answer that uses tools has
the same lifecycle as any other (one worker, one cancel scope, cleanup once):
model call, tool calls (run in order), tool results, the next model call, up to
JARVIS_AGENT_MAX_STEPS. The tools come from the tools wing through ``Tools``; a
running tool is left at once on cancel (the tools wing stops it behind the answer's
back). The wing imports the foundation and the upstream interface; the web routes
use it; the compatible dialects never do (their clients run their own tools).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Protocol

from ..cancel import CancelScope
from ..config import Config
from ..conversation import Chat, Message, Tool, ToolCall, ToolResult
from ..errors import UpstreamTimeout
from ..upstream import Done, Item, Meta, Progress, Upstream


class Tools(Protocol):
    """What the agent needs of the tools wing (``jarvis.tools.ToolBox``)."""

    def tools(self, deadline_s: float, cancel: CancelScope | None = None) -> list[Tool]: ...

    def call(self, call: ToolCall, cancel: CancelScope, timeout_s: float | None = None) -> ToolResult: ...


class Agent:
    """An upstream whose model may use the tools a chat offers (``offered``: their names; None: all)."""

    def __init__(
        self, upstream: Upstream, tools: Tools, config: Config, offered: frozenset[str] | None = None
    ):
        self.upstream, self.box, self.config, self.offered = upstream, tools, config, offered
        self.name, self.default_model = upstream.name, upstream.default_model

    def stream_chat(self, chat: Chat, cancel: CancelScope, session: str | None = None) -> Iterator[Item]:
        """The steps of one answer as one stream: each model call's items, each tool's result."""
        if cancel.cancelled:  # checkpoint: stopped before anything ran
            return
        # JARVIS_TOTAL_TIMEOUT bounds the whole answer: each model call has its own, the steps this
        deadline = time.monotonic() + self.config.total_timeout_s
        found = self.box.tools(min(self.config.tool_start_timeout_s, self.config.total_timeout_s), cancel)
        tools = tuple(t for t in found if self.offered is None or t.name in self.offered)
        if cancel.cancelled:
            return
        if not tools:
            yield from self.upstream.stream_chat(chat, cancel, session)
            return
        yield from _Steps(self, dataclasses.replace(chat, tools=tools), cancel, session, deadline).run()

    def check(self, chat: Chat) -> None:
        self.upstream.check(chat)

    def capabilities(self, model: str) -> frozenset[str] | None:
        return self.upstream.capabilities(model)

    def health(self) -> dict:
        return self.upstream.health()

    def models(self) -> list[dict]:
        return self.upstream.models()

    def close(self) -> None:
        """The real upstream and the tools belong to the app: nothing of the agent's own to free."""


class _Steps:
    """One answer's model calls and tool calls, with its usage summed over the steps."""

    def __init__(self, agent: Agent, chat: Chat, cancel: CancelScope, session: str | None, deadline: float):
        self.agent, self.chat, self.cancel, self.session = agent, chat, cancel, session
        self.deadline = deadline  # monotonic: when the answer has had JARVIS_TOTAL_TIMEOUT
        self.offered = frozenset(t.name for t in chat.tools)
        self.messages: list[Message] = list(chat.messages)
        self.prompt_tokens = self.completion_tokens = 0
        self.steps = 0  # model calls made

    def run(self) -> Iterator[Item]:
        limit = self.agent.config.agent_max_steps
        for _ in range(limit):
            calls, done = yield from self._model_call()
            if done is None or self.cancel.cancelled:  # cancelled, or the stream ended unfinished
                return
            if not calls:
                yield self._done(done.reason)
                return
            if done.reason == "length":  # cut by the token limit: no model call is left to read results
                yield from self._not_run(calls, "the answer was cut by the model's token limit")
                yield self._done(done.reason)
                return
            yield from self._run(calls)
            if self.cancel.cancelled:
                return
        yield Meta({"agent": {"steps": limit, "stopped": "JARVIS_AGENT_MAX_STEPS"}})
        yield f"\n\n(Stopped after {limit} steps with tools: the limit is JARVIS_AGENT_MAX_STEPS.)"
        yield self._done("length")

    def _model_call(self):
        calls: list[ToolCall] = []
        texts: list[str] = []
        done = None
        asked = dataclasses.replace(self.chat, messages=self.messages)
        self._left()
        items = self.agent.upstream.stream_chat(asked, self.cancel, self.session)
        try:
            for item in items:
                if isinstance(item, Done):
                    done = item
                    continue
                if isinstance(item, Progress) and self.steps:  # "waiting" is for before the first text
                    continue
                if isinstance(item, ToolCall):
                    calls.append(item)
                elif isinstance(item, str):
                    texts.append(item)
                yield item
                self._left()  # checkpoint: a later step's model call ends with the answer's time
        finally:
            getattr(items, "close", lambda: None)()
        self.steps += 1
        if done is not None:
            self.prompt_tokens += done.prompt_tokens or 0
            self.completion_tokens += done.completion_tokens or 0
            self.messages.append({"role": "assistant", "content": "".join(texts), "tool_calls": calls})
        return calls, done

    def _run(self, calls: list[ToolCall]) -> Iterator[Item]:
        """Each call in order, its result handed back to the model; a cancel leaves the one running."""
        for call in calls:
            if call.name not in self.offered:  # the chat's choice holds, whatever the model asks for
                result = ToolResult(
                    f"not run: there is no tool named {call.name} in this chat", True, 0.0, call.id
                )
            else:
                result = dataclasses.replace(self.agent.box.call(call, self.cancel, self._left()), id=call.id)
                if self.cancel.cancelled:  # the tool is left to the tools wing to stop
                    return
                self._left()  # past the answer's time the call was given up (and its server told)
            yield result
            self.messages.append(
                {"role": "tool", "content": result.content, "tool_call_id": call.id, "name": call.name}
            )

    def _left(self) -> float:
        """Seconds left of the answer's JARVIS_TOTAL_TIMEOUT; UpstreamTimeout once none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            total = self.agent.config.total_timeout_s
            raise UpstreamTimeout(f"the answer took longer than {total:g} s", code="total_timeout")
        return left

    def _not_run(self, calls: list[ToolCall], why: str) -> Iterator[Item]:
        """A result for each call the answer ends without running: a stored answer goes back to the
        model as its steps, and a call with no result there is one a server refuses (or the model
        takes as still running)."""
        for call in calls:
            yield ToolResult(f"not run: {why}", True, 0.0, call.id)

    def _done(self, reason: str) -> Done:
        return Done(reason, self.prompt_tokens or None, self.completion_tokens or None)
