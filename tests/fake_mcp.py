"""A fake MCP server over stdio, written with the official SDK: tools that misbehave on purpose.

Run as ``python -m tests.fake_mcp`` (or by path). It appends what it lives through to the file
named by ``FAKE_MCP_LOG`` (one JSON object a line: started, sleeping, cancelled...), so a test can
wait for a tool to be running and check the server saw ``notifications/cancelled``.
``FAKE_MCP_HANG_START=1`` makes it hang before it reads a byte (a server stuck at start-up);
``FAKE_MCP_HTTP_PORT=N`` makes it a streamable-HTTP server on 127.0.0.1:N instead.
"""

from __future__ import annotations

import json
import os
import time

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("fake")
# the SDK moves sys.stdout off the protocol pipe; a copy of fd 1 taken first still writes to it
PROTOCOL_FD = os.dup(1)


def record(event: str, **fields) -> None:
    path = os.environ.get("FAKE_MCP_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")


@server.tool()
async def echo(text: str) -> str:
    """Answer the text it was given."""
    return text


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleep, and stop at once when the client cancels."""
    record("sleeping", seconds=seconds)
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        record("cancelled")  # only notifications/cancelled interrupts this handler
        raise
    return f"slept {seconds}"


@server.tool()
async def sleep_ignoring_cancel(seconds: float) -> str:
    """Block the whole server for a while: it answers neither the cancel nor a ping."""
    record("sleeping", seconds=seconds)
    time.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
async def crash() -> str:
    """Exit in the middle of the call."""
    record("crashing")
    os._exit(3)


@server.tool()
async def flood(chars: int) -> str:
    """Answer a huge text."""
    return "x" * chars


@server.tool()
async def garbage() -> str:
    """Write something that is not JSON-RPC to stdout, then sit on the call."""
    os.write(PROTOCOL_FD, b"this is not JSON\n")
    await anyio.sleep(3600)
    return "unreachable"


@server.tool()
async def env() -> str:
    """The names of the environment variables the server was given."""
    return json.dumps(sorted(os.environ))


def main() -> None:
    record("started")
    if os.environ.get("FAKE_MCP_HANG_START") == "1":
        time.sleep(3600)  # the client must give up and kill it
    port = os.environ.get("FAKE_MCP_HTTP_PORT")
    if port:  # a streamable-HTTP server instead, at http://127.0.0.1:PORT/mcp
        server.run("streamable-http", port=int(port))
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
