"""One configured MCP server over time: started on first use, restarted after it is lost.

Everything here runs in the tool loop's thread (one owner), so the state needs no lock; worker
threads read it only through ``snapshot()``, a fresh dict each time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import anyio
import mcp_types
from mcp import MCPError
from pydantic import ValidationError

from .connection import Connection, ToolServerError
from .servers import ServerSpec

log = logging.getLogger("jarvis.tools")


@dataclass(frozen=True)
class Limits:
    start_timeout_s: float
    cancel_timeout_s: float
    stop_grace_s: float = 0.5  # between terminate and kill


@dataclass
class Job:
    """One call in the loop: the scope that abandoning it cancels, and the connection it used."""

    scope: anyio.CancelScope | None = None  # made in the loop: anyio needs its event loop
    abandoned: bool = False
    connection: Connection | None = None


class ToolServer:
    """The state of one server: not started, ready or failed, and its live connection if any."""

    def __init__(self, spec: ServerSpec, limits: Limits) -> None:
        self.spec = spec
        self.limits = limits
        self.state = "not started"
        self.error: dict | None = None
        self.tools: list[mcp_types.Tool] = []
        self.restarts = 0
        self._connection: Connection | None = None
        self._starting: asyncio.Task | None = None
        self._opening: Connection | None = None  # the connection a start is opening

    def snapshot(self) -> dict:
        """This server as GET /api/tools and ``jarvis check`` show it."""
        return {
            "server": self.spec.name,
            "transport": self.spec.transport,
            "state": self.state,
            "error": dict(self.error) if self.error else None,
            "tools": [{"name": t.name, "description": t.description or ""} for t in self.tools],
        }

    async def ready(self) -> Connection:
        """The live connection, starting the server if it is not running (one start, shared)."""
        if self._connection is not None and self._connection.alive:
            return self._connection
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start())
            self._starting.add_done_callback(_seen)
        # shielded: one caller giving up must not stop the start the others wait for
        return await asyncio.shield(self._starting)

    async def _start(self) -> Connection:
        log.debug("starting MCP server %s", self.spec.name)
        connection = self._opening = Connection(self.spec, self.limits.stop_grace_s, self._ended)
        try:
            await connection.open(self.limits.start_timeout_s)
        except ToolServerError as e:
            self.state, self.error = "failed", e.to_dict()
            log.warning("MCP server %s failed to start: %s", self.spec.name, e.message)
            raise
        finally:
            self._starting = self._opening = None
        self._connection, self.tools = connection, connection.tools
        self.state, self.error = "ready", None
        return connection

    def _ended(self, connection: Connection, why: str) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        if why != "stopped":  # lost, not stopped by Jarvis: say so until it runs again
            self.state = "failed"
            self.error = {"code": "tool_server_lost", "message": f"the server {why}"}
            log.warning("MCP server %s lost: %s", self.spec.name, why)

    async def call(self, tool: str, arguments: dict, job: Job) -> mcp_types.CallToolResult | str:
        """Run one call; the text of the error when it fails. ``job.scope`` cancels it."""
        job.scope = anyio.CancelScope()
        if job.abandoned:
            job.scope.cancel()
        with job.scope:
            try:
                job.connection = await self.ready()
                return await job.connection.call(tool, arguments)
            except ToolServerError as e:
                return f"the MCP server {self.spec.name} is not available: {e.message}"
            except MCPError as e:
                if job.connection is not None and not job.connection.alive:
                    why = await job.connection.ended(1.0)
                    return f"the MCP server {self.spec.name} {why} during the call"
                return f"the MCP server {self.spec.name} answered an error: {e.error.message}"
            except (ValidationError, RuntimeError) as e:
                return f"the MCP server {self.spec.name} answered something unexpected: {e}"
        return "cancelled"

    def abandon(self, job: Job) -> None:
        """The caller stopped waiting: cancel the call (the SDK sends notifications/cancelled), then
        check the server still answers; one that does not is stopped and restarted on next use."""
        job.abandoned = True
        if job.scope is not None:
            job.scope.cancel()
        if job.connection is not None:
            task = asyncio.get_running_loop().create_task(self._check(job.connection))
            task.add_done_callback(_seen)

    async def _check(self, connection: Connection) -> None:
        if await connection.ping(self.limits.cancel_timeout_s):
            return
        log.warning(
            "MCP server %s did not answer a ping within %g s of a cancelled call; stopping it",
            self.spec.name,
            self.limits.cancel_timeout_s,
        )
        if connection is self._connection:
            self._connection = None
            self.state = "not started"
            self.error = {
                "code": "tool_server_restarted",
                "message": f"stopped: it did not answer within {self.limits.cancel_timeout_s:g} s "
                "of a cancelled call; it starts again on next use",
            }
            self.restarts += 1
        await connection.close(self.limits.stop_grace_s + 3.0)

    async def close(self, timeout_s: float) -> bool:
        """Stop the server (and a start in progress); True if it is gone."""
        if self._starting is not None:
            self._starting.cancel()
        connection = self._connection or self._opening
        self._connection = self._opening = None
        if connection is None:
            return True
        self.state = "not started"
        return await connection.close(timeout_s)

    @property
    def pid(self) -> int | None:
        return self._connection.pid if self._connection is not None else None


def _seen(task: asyncio.Task) -> None:
    # a start or check that failed has said so in the log and the state; mark its error as read
    if not task.cancelled():
        task.exception()
