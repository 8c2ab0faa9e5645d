"""A stdio MCP server as a child process: its pipes bridged to the SDK's session streams.

Jarvis spawns the program itself rather than through the SDK's ``stdio_client`` because it must
own three things that client decides alone: the environment (the file's ``env`` and a minimal
PATH/HOME/LANG, nothing of Jarvis's), how long stopping takes (terminate, then kill, within
JARVIS_TOOL_CANCEL_TIMEOUT, not the SDK's fixed 2 s + 2 s), and what a misbehaving server
costs (a line that is not JSON-RPC or is longer than MAX_LINE_BYTES ends the connection at
once instead of being logged while the call waits). The program runs in its own process
group, so stopping it stops whatever it started too.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import anyio
import mcp_types
from anyio.abc import ByteReceiveStream, Process
from mcp.shared.message import SessionMessage

from .servers import ServerSpec

log = logging.getLogger("jarvis.tools")

MAX_LINE_BYTES = 16 * 1024 * 1024  # one JSON-RPC message; a result is cut far below this anyway
STDERR_TAIL_BYTES = 2048  # kept to say why a server failed
REAP_TIMEOUT_S = 2.0  # after SIGKILL: only an unkillable process (D state) waits this out
_PIPE_ERRORS = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError)


class StdioTransport:
    """One run of a stdio server; ``lost`` is called once with why the connection ended."""

    def __init__(self, spec: ServerSpec, lost: Callable[[str], None], stop_grace_s: float) -> None:
        self.spec = spec
        self.stop_grace_s = stop_grace_s
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.stderr_tail = b""
        self._lost = lost

    @asynccontextmanager
    async def open(self) -> AsyncIterator[tuple]:
        """Start the program and yield (read stream, write stream) for a ClientSession."""
        process = await anyio.open_process(
            [self.spec.command, *self.spec.args],
            env=self.spec.child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own group: killpg reaches its children too
        )
        self.pid = process.pid
        to_session, session_reads = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        session_writes, from_session = anyio.create_memory_object_stream[SessionMessage](0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_stdout, process, to_session)
            tg.start_soon(self._write_stdin, process, from_session)
            tg.start_soon(self._read_stderr, process.stderr)
            try:
                yield session_reads, session_writes
            finally:
                with anyio.CancelScope(shield=True):  # the process must die even if we are cancelled
                    await self.stop(process)
                tg.cancel_scope.cancel()

    async def _read_stdout(self, process: Process, out) -> None:
        why = "closed its stdout"
        async with out:
            try:
                async for line in _lines(process.stdout):
                    try:
                        message = mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except ValueError:
                        why = f"wrote something that is not JSON-RPC to stdout: {line[:80]!r}"
                        break
                    await out.send(SessionMessage(message))
            except LineTooLong:
                why = f"wrote a message longer than {MAX_LINE_BYTES} bytes"
            except _PIPE_ERRORS:
                pass
        self._lost(why)  # at once: a call must not go to a server that is gone

    async def _write_stdin(self, process: Process, source) -> None:
        async with source:
            try:
                async for message in source:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send(data.encode() + b"\n")
            except _PIPE_ERRORS:
                self._lost("stopped reading its stdin")

    async def _read_stderr(self, stderr: ByteReceiveStream) -> None:
        # always drained, so a chatty server never blocks on a full pipe; only the tail is kept
        with suppress(*_PIPE_ERRORS):
            async for chunk in stderr:
                self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_TAIL_BYTES:]

    async def stop(self, process: Process) -> None:
        """Close stdin, terminate the group, kill it after ``stop_grace_s``; bounded throughout."""
        with suppress(*_PIPE_ERRORS):
            await process.stdin.aclose()
        if not await _exited(process, 0.05):  # a server that crashed is usually gone already
            _signal_group(process.pid, signal.SIGTERM)
        if not await _exited(process, self.stop_grace_s):
            log.warning("MCP server %s ignored SIGTERM; killing it", self.spec.name)
        # the leader may be gone while a child it started still holds the group
        _signal_group(process.pid, signal.SIGKILL)
        if not await _exited(process, REAP_TIMEOUT_S):
            log.error("MCP server %s (pid %s) survived SIGKILL", self.spec.name, process.pid)
        self.exit_code = process.returncode
        for pipe in (process.stdout, process.stderr):
            with suppress(*_PIPE_ERRORS):
                await pipe.aclose()


class LineTooLong(Exception):
    """A line past MAX_LINE_BYTES: the server is flooding or broken."""


async def _lines(stream: ByteReceiveStream) -> AsyncIterator[bytes]:
    # newlines are searched for in each new chunk only: a long line costs its length, not its square
    parts: list[bytes] = []
    size = 0
    async for chunk in stream:
        while (end := chunk.find(b"\n")) >= 0:
            parts.append(chunk[:end])
            line, parts, size = b"".join(parts), [], 0
            chunk = chunk[end + 1 :]
            if line.strip():
                yield line
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_LINE_BYTES:
            raise LineTooLong


async def _exited(process: Process, timeout_s: float) -> bool:
    # returncode, not wait(): wait() also waits for pipe EOF, which a grandchild can hold open
    with anyio.move_on_after(timeout_s):
        while process.returncode is None:
            await anyio.sleep(0.005)
    return process.returncode is not None


def _signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
