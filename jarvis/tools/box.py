"""Every configured MCP server behind one thread-safe interface for the agent loop.

A worker thread never waits on a server without a deadline: it hands the call to the tool loop
and waits on an event that the call's end, the answer's CancelScope or the deadline sets,
whichever comes first. On cancel or timeout it returns at once; the loop cancels the call (the
SDK sends ``notifications/cancelled``), pings the server and stops one that does not answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time

from ..cancel import CancelScope
from ..config import Config
from ..conversation import Tool, ToolCall
from . import servers
from .loop import LoopThread
from .results import ToolResult, cut, text_of
from .server import Job, Limits, ToolServer

log = logging.getLogger("jarvis.tools")


class ToolBox:
    """The MCP servers of JARVIS_MCP_CONFIG: their tools as the model sees them, and calls to them."""

    def __init__(self, specs: list[servers.ServerSpec], config: Config) -> None:
        self._config = config
        limits = Limits(config.tool_start_timeout_s, config.tool_cancel_timeout_s)
        self._servers = {spec.name: ToolServer(spec, limits) for spec in specs}
        self._closed = False
        self._loop = LoopThread()
        for server in self._servers.values():
            if server.spec.eager:  # started now, in the loop: start-up does not wait for it
                self._loop.submit(_quietly(server.ready()))

    @classmethod
    def from_config(cls, config: Config) -> ToolBox | None:
        """The servers of JARVIS_MCP_CONFIG, none started yet (but the eager ones); None when unset."""
        if not config.mcp_config:
            return None
        return cls(servers.load(config.mcp_config), config)

    def tools(self, deadline_s: float, cancel: CancelScope | None = None) -> list[Tool]:
        """Every tool of every server that is ready within ``deadline_s`` (starting those not started),
        named NAME__TOOL; a server that fails is left out, and ``describe`` says why. A ``cancel``
        ends the wait at once (the servers go on starting in the loop)."""
        if not self._closed:
            future = self._loop.submit(self._start_all(deadline_s))
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            undo = cancel.on_cancel(done.set) if cancel is not None else (lambda: None)
            try:
                done.wait(deadline_s + 0.5)
            finally:
                undo()
        return [
            Tool(f"{name}{servers.SEPARATOR}{t.name}", t.description or "", t.input_schema)
            for name, server in self._servers.items()
            if server.state == "ready"
            for t in list(server.tools)
        ]

    async def _start_all(self, deadline_s: float) -> None:
        tasks = [asyncio.ensure_future(_quietly(s.ready())) for s in self._servers.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=deadline_s)  # the ones still starting go on in the loop

    def describe(self) -> list[dict]:
        """Each server: transport, state (not started, ready, failed), its error and its tools."""
        return [server.snapshot() for server in self._servers.values()]

    def call(self, call: ToolCall, cancel: CancelScope, timeout_s: float | None = None) -> ToolResult:
        """Run one tool call; bounded by JARVIS_TOOL_TIMEOUT (or ``timeout_s``, what is left of the
        answer's own time, when sooner), and back at once when ``cancel`` fires."""
        started = time.monotonic()
        limit = (
            self._config.tool_timeout_s if timeout_s is None else min(timeout_s, self._config.tool_timeout_s)
        )

        def result(text: str, is_error: bool = True) -> ToolResult:
            text = cut(text, self._config.tool_result_max_chars)
            return ToolResult(text, is_error, (time.monotonic() - started) * 1000)

        server, tool, arguments, problem = self._resolve(call)
        if problem:
            return result(problem)
        job = Job()
        done = threading.Event()
        try:
            future = self._loop.submit(server.call(tool, arguments, job))
        except RuntimeError:  # the loop has stopped: Jarvis is shutting down
            return result("tools are shut down")
        future.add_done_callback(lambda _: done.set())
        undo = cancel.on_cancel(done.set)  # checkpoint: Stop wakes this wait at once
        try:
            done.wait(limit)
        finally:
            undo()
        if future.done():
            return self._finished(future, result)
        self._loop.soon(lambda: server.abandon(job))
        if cancel.cancelled:
            return result(f"cancelled ({cancel.reason})")
        return result(f"{call.name} timed out after {limit:g} s")

    def _resolve(self, call: ToolCall) -> tuple:
        name, _, tool = call.name.partition(servers.SEPARATOR)
        server = self._servers.get(name)
        if server is None or not tool:
            return None, "", {}, f"there is no tool named {call.name}"
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            return None, "", {}, f"the arguments of {call.name} are not a JSON object"
        if self._closed:
            return None, "", {}, "tools are shut down"
        return server, tool, arguments, ""

    @staticmethod
    def _finished(future: concurrent.futures.Future, result) -> ToolResult:
        try:
            outcome = future.result(timeout=0)
        except concurrent.futures.CancelledError:
            return result("cancelled: tools are shutting down")
        except Exception as e:  # a bug in the bridge must still end the call as an error, logged
            log.exception("tool call failed in the tool loop")
            return result(f"the tool call failed: {type(e).__name__}")
        if isinstance(outcome, str):
            return result(outcome)
        return result(text_of(outcome), bool(outcome.is_error))

    def close(self, timeout_s: float) -> list[str]:
        """Stop every server and join the loop thread within ``timeout_s``; names what is left."""
        deadline = time.monotonic() + timeout_s
        self._closed = True
        left = []
        if self._loop.alive:
            future = self._loop.submit(self._close_all(timeout_s))
            try:
                left = future.result(timeout=timeout_s)
            except concurrent.futures.TimeoutError:
                left = [f"MCP server {name}" for name in self._servers]
        if not self._loop.stop(max(0.05, deadline - time.monotonic())):
            left.append("the tool loop thread")
        return left

    async def _close_all(self, timeout_s: float) -> list[str]:
        closing = {name: s.close(max(0.1, timeout_s - 0.2)) for name, s in self._servers.items()}
        stopped = await asyncio.gather(*closing.values())
        left = [f"MCP server {name}" for name, ok in zip(closing, stopped, strict=True) if not ok]
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        for task in rest:  # calls still waiting: they end as cancelled
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=0.2)
        return left


async def _quietly(awaitable) -> None:
    """Start a server for someone who only needs it tried: its failure is in its state."""
    try:
        await awaitable
    except Exception:  # a failed start is recorded in the server's state and logged there
        log.debug("MCP server start failed", exc_info=True)
