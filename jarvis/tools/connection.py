"""One started MCP server: its transport and the SDK's ClientSession, owned by one task.

anyio scopes must be left by the task that entered them, so a single owner task enters the
transport and the session, lists the tools, then waits to be told to stop (or for the server to
go away). Calls from other tasks share the session: the SDK matches answers to requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import httpx2
import mcp_types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from ..errors import JarvisError
from .servers import ServerSpec
from .stdio import StdioTransport

log = logging.getLogger("jarvis.tools")

CLIENT_INFO = mcp_types.Implementation(name="jarvis", version="0.1.0")
MAX_TOOL_PAGES = 20  # a server that pages forever is cut off here


class ToolServerError(JarvisError):
    """An MCP server would not start, list its tools, or stay up."""

    http_status = 502
    code = "tool_server_failed"


class Connection:
    """A live session to one server; ``ended`` is called once, with why, when it goes away."""

    def __init__(
        self, spec: ServerSpec, stop_grace_s: float, ended: Callable[[Connection, str], None]
    ) -> None:
        self.spec = spec
        self.session: ClientSession | None = None
        self.tools: list[mcp_types.Tool] = []
        self.why: str | None = None  # why it ended
        self._stop_grace_s = stop_grace_s
        self._ended = ended
        self._settled = asyncio.Event()  # ready, or ended before it was
        self._done = asyncio.Event()
        self._scope = anyio.CancelScope()
        self._stdio: StdioTransport | None = None
        self._task: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        return self.session is not None and self.why is None

    @property
    def pid(self) -> int | None:
        return self._stdio.pid if self._stdio else None

    async def open(self, timeout_s: float) -> None:
        """Start the server and list its tools within ``timeout_s``, or stop it and raise."""
        self._task = asyncio.get_running_loop().create_task(self._own(), name=f"mcp-{self.spec.name}")
        await _set_within(self._settled, timeout_s)
        if self.alive:
            return
        self.why = self.why or f"did not start and list its tools within {timeout_s:g} s"
        await self.close(self._stop_grace_s + 3.0)
        raise ToolServerError(self._explained())

    def _explained(self) -> str:
        tail = self._stdio.stderr_tail.decode("utf-8", "replace").strip() if self._stdio else ""
        return f"{self.why}; its stderr ends: {tail[-300:]}" if tail else str(self.why)

    async def _own(self) -> None:
        try:
            with self._scope:
                async with self._transport() as (read, write):
                    async with ClientSession(read, write, client_info=CLIENT_INFO) as session:
                        await session.initialize()
                        self.tools = await _list_tools(session)
                        self.session = session
                        self._settled.set()
                        await anyio.sleep_forever()  # until close() or the transport is lost
        except Exception as e:  # whatever the SDK or the server raised, it is why this connection ended
            self._lose(_describe(e))
            log.info("MCP server %s failed: %s", self.spec.name, self.why)
        finally:
            self._lose("stopped")
            code = self._stdio.exit_code if self._stdio else None
            if self.why == "closed its stdout" and code is not None and code >= 0:
                self.why = f"exited with code {code}"
            self._done.set()
            self._settled.set()
            self._ended(self, self.why or "stopped")

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple]:
        if self.spec.transport == "stdio":
            self._stdio = StdioTransport(self.spec, self._lost, self._stop_grace_s)
            async with self._stdio.open() as streams:
                yield streams
            return
        timeout = httpx2.Timeout(10.0, read=None)  # each call is bounded by Jarvis, not the socket
        async with httpx2.AsyncClient(headers=self.spec.headers, timeout=timeout) as client:
            async with streamable_http_client(self.spec.url, http_client=client) as streams:
                yield streams

    def _lose(self, why: str) -> None:
        if self.why is None:
            self.why = why

    def _lost(self, why: str) -> None:
        """The transport says the server went away: end the session, failing its calls at once."""
        self._lose(why)
        self._scope.cancel()

    async def call(self, tool: str, arguments: dict) -> mcp_types.CallToolResult:
        if not self.alive:
            raise ToolServerError(f"the server {self.why or 'is not running'}")
        return await self.session.call_tool(tool, arguments)

    async def ping(self, timeout_s: float) -> bool:
        """True if the server answers a ping within ``timeout_s``."""
        if not self.alive:
            return False
        with anyio.move_on_after(timeout_s):
            try:
                await self.session.send_ping()
            except Exception as e:  # any failure to answer means the same: not responsive
                log.info("MCP server %s failed a ping: %s", self.spec.name, _describe(e))
                return False
            return True
        return False

    async def ended(self, timeout_s: float) -> str | None:
        """Why the connection ended, waiting up to ``timeout_s`` for it to end."""
        await _set_within(self._done, timeout_s)
        return self.why

    async def close(self, timeout_s: float) -> bool:
        """Stop the session and the server; True once the owner task has ended."""
        self._lose("stopped")
        self._scope.cancel()
        return await _set_within(self._done, timeout_s)


async def _set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``event``; whether it is set."""
    try:
        await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout_s))
    except TimeoutError:  # not set in time: the caller reads that from the event
        pass
    return event.is_set()


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    tools, cursor = [], None
    for _ in range(MAX_TOOL_PAGES):
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _describe(e: BaseException) -> str:
    """The innermost reason of an error the SDK may have wrapped in exception groups."""
    while isinstance(getattr(e, "exceptions", None), tuple) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
