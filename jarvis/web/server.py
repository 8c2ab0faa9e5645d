"""Running the app under waitress, with a shutdown that ends within a deadline.

Every open SSE response holds one waitress thread for its whole life, so the
pool gets ``max_streams`` threads plus a reserve for stop, health and history
requests. Request lookahead lets waitress notice a client that has gone while
its stream writes nothing. Under ``jarvis serve`` the channel tells the
registry the moment a client with a request in flight closes its connection,
so its answer ends at once whatever it is doing (loading, stalled, streaming);
under any other waitress the registry polls (``JARVIS_DISCONNECT_POLL``, with
lookahead), and without lookahead only a failed write, one heartbeat later,
reveals a gone client: that is the floor there.

A Stop is ended in the event loop too, under ``jarvis serve``: once waitress has
parsed a ``POST …/stop``, the app checks it as its thread would without the
database (``answers.stoppable_in_loop``); the Stops that come together (read
pass after pass while each finds more, ``BURST_S`` at most) end their answers
together, without letting go of the GIL (``jarvis.gil``), then go to the
threads, which find their answers ended and answer as the route does. A Stop
no longer waits for a free thread to reach its upstream; anything the checks
do not pass is left to the thread, as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time

from flask import Flask
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.proxy_headers import proxy_headers_middleware
from waitress.server import create_server
from waitress.task import WSGITask

from .. import gil, log
from ..status import Reason
from . import answers
from .auth import STOPPED_IN_LOOP
from .bodies import MAX_BODY_BYTES
from .page import ForwardedPrefix

CONTROL_THREADS = 4  # served while every stream slot is busy
BURST_S = 0.03  # the longest the event loop reads on before it ends the Stops it has read
BURST_SWITCH_S = 0.05  # the interpreter's switch interval meanwhile (Server._burst_begins)
_STOPPABLE = "jarvis.stoppable"  # the event loop's own environ of a Stop: the answer it may end


class _Parser(HTTPRequestParser):
    """waitress's request parser, which shows its channel a request the moment it is complete:
    in the event loop, before the channel queues it for a thread."""

    def __init__(self, adj, channel: _Channel):
        super().__init__(adj)
        self.channel = channel
        self.stoppable = None  # the answer this request (a Stop) may end in the event loop
        self.stopped_in_loop = None  # and the one it ended there, before its task started
        self.lines: list = []  # the log lines of what the loop did for it, for its task to write

    def received(self, data: bytes) -> int:
        taken = super().received(data)
        if self.completed and not self.error and not self.empty:
            self.stoppable = self.channel.stoppable(self)
        return taken

    def write_lines(self) -> None:
        lines, self.lines = self.lines, []
        log.write(lines)


class _Task(WSGITask):
    """waitress's task, which tells the app what the event loop already did for its request, and
    writes the log lines of it."""

    def service(self) -> None:
        self.request.write_lines()
        super().service()

    def get_environment(self) -> dict:
        environ = super().get_environment()
        if self.request.stopped_in_loop is not None:  # a key no header can set (those are HTTP_*)
            environ[STOPPED_IN_LOOP] = self.request.stopped_in_loop
        return environ


class _Channel(HTTPChannel):
    """waitress's channel, which also says when a client closes while its request is served, and
    ends a Stop's answer as soon as the Stop is read, whether or not a thread is free to serve it."""

    on_client_closed = staticmethod(lambda gone: None)  # set per server, in a subclass
    stop_in_loop = staticmethod(lambda environ, start_response: [])  # likewise (Server._stop_check)
    task_class = _Task

    def parser_class(self, adj) -> _Parser:  # waitress calls self.parser_class(self.adj)
        return _Parser(adj, self)

    def stoppable(self, request: _Parser):
        """The answer a complete Stop request may end in the event loop, or None (every other
        request, and any Stop the app leaves to its thread)."""
        if request.command != "POST" or not request.path.endswith("/stop"):
            return None
        if self.requests:  # behind an earlier request on this connection: served in its turn
            return None
        environ = WSGITask(self, request).get_environment()  # the one the thread's task builds
        environ["wsgi.input"] = io.BytesIO()  # the body stays unread: the thread reads it
        try:
            self.stop_in_loop(environ, lambda *a: None)
        except Exception:  # never let a Stop take the event loop down: the thread serves it as ever
            log.log.exception("a Stop failed in the event loop; its thread serves it")
            return None
        return environ.get(_STOPPABLE)

    def cancel(self):  # shutting down before a thread served them: their lines still go out
        for request in self.requests:
            request.write_lines()
        super().cancel()

    def recv(self, buffer_size: int) -> bytes:
        """wasyncore's recv, keeping the GIL (``jarvis.gil``): the loop calls it on a socket its
        poll found readable, so it never blocks, and each Stop of a burst is read without handing
        the GIL to the answers the previous ones ended."""
        try:
            data = gil.recv(self.socket, buffer_size)
        except OSError as e:
            if e.errno not in wasyncore._DISCONNECTED:  # wasyncore's own list
                raise
            data = b""
        if not data:  # the client closed (or reset) its connection
            self.handle_close()
        return data

    def handle_read(self):
        super().handle_read()
        if not self.connected and self.requests:  # the client closed: recv gave b""
            self.on_client_closed(self.check_client_disconnected)

    def handle_close(self):
        serving = bool(self.requests)
        super().handle_close()
        if serving:
            self.on_client_closed(self.check_client_disconnected)


class Server:
    """One waitress server for one Jarvis app."""

    def __init__(
        self,
        app: Flask,
        host: str = "127.0.0.1",
        port: int = 8000,
        threads: int | None = None,
        unix_socket: str | None = None,
        **adj,
    ):
        """Listen on ``host``:``port``, or, given ``unix_socket``, on that path alone (mode 0660),
        where every peer is the reverse proxy: its X-Forwarded-For and -Proto are believed."""
        self.app = app
        self.unix_socket = unix_socket
        self.jarvis = app.extensions["jarvis"]
        self.threads = threads or self.jarvis.config.max_streams + CONTROL_THREADS
        adj.setdefault("channel_request_lookahead", 5)
        # idle and half-sent connections cost no thread (waitress parses in its event loop);
        # these bound how many it holds and for how long
        adj.setdefault("connection_limit", max(500, self.threads * 4))
        adj.setdefault("channel_timeout", 60)
        adj.setdefault("cleanup_interval", 10)
        adj.setdefault("asyncore_use_poll", True)  # select() fails past descriptor 1024
        # keep X-Forwarded-*/Forwarded: protected mode must see that a request came through a proxy
        adj.setdefault("clear_untrusted_proxy_headers", False)
        adj.setdefault("ident", "jarvis")
        # waitress reads a whole body before the app runs: refuse from its length one bigger than any
        # route reads; up to that, each route's own limit answers (a 16 MiB import, a JSON 413)
        adj.setdefault("max_request_body_size", MAX_BODY_BYTES)
        if unix_socket:
            # waitress names every peer of a Unix socket "localhost": trust it as the proxy, so the
            # client's address comes from the one hop the proxy adds, and nobody reaches us past it
            adj.update(unix_socket=unix_socket, unix_socket_perms="660", trusted_proxy="localhost")
            adj.setdefault("trusted_proxy_headers", {"x-forwarded-for", "x-forwarded-proto"})
            listen = {}
        else:
            listen = {"host": host, "port": port}
        umask = os.umask(0o117)  # the socket is born 0660: no moment when others may connect
        try:
            self._waitress = create_server(app, threads=self.threads, **listen, **adj)
        finally:
            os.umask(umask)
        # run in the event loop: it ends that client's answers (a cancel: a few socket calls)
        on_close = self.jarvis.registry.watcher.client_closed
        # and a Stop, once read, ends its answer there too (its checks read no database)
        self._waitress.channel_class = type(
            "JarvisChannel",
            (_Channel,),
            {"on_client_closed": staticmethod(on_close), "stop_in_loop": staticmethod(self._stop_check())},
        )
        # the Stops of a burst end their answers together once all are read, then go to their
        # threads: each cancel wakes its answer's end, which would compete with the loop for the
        # GIL while it reads the next Stop
        self._held: list = []
        self._usual_switch = sys.getswitchinterval()  # restored when a burst of Stops has ended
        self._loop_ident: int | None = None
        self._waitress.add_task = self._add_task
        self._loop: threading.Thread | None = None
        self._stopped = threading.Event()

    def _stop_check(self):
        """``answers.stop_in_loop`` as a WSGI app behind the same middleware as the app itself
        (waitress's proxy headers, the sub-path), so it sees the environ the route will see; it
        leaves the answer the Stop may end in the environ, under ``_STOPPABLE``."""

        def check(environ, start_response) -> list:
            environ[_STOPPABLE] = answers.stoppable_in_loop(self.app, environ)
            return []

        chain = check
        if isinstance(self.app.wsgi_app, ForwardedPrefix):
            chain = ForwardedPrefix(chain, self.jarvis.config.trusted_proxies)
        adj = self._waitress.adj
        if adj.trusted_proxy or adj.clear_untrusted_proxy_headers:  # as waitress's create_server
            chain = proxy_headers_middleware(
                chain,
                trusted_proxy=adj.trusted_proxy,
                trusted_proxy_count=adj.trusted_proxy_count,
                trusted_proxy_headers=adj.trusted_proxy_headers,
                clear_untrusted=adj.clear_untrusted_proxy_headers,
                log_untrusted=adj.log_untrusted_proxy_headers,
                logger=self._waitress.logger,
            )
        return chain

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        return f"http://{self._waitress.effective_host}:{self._waitress.effective_port}"

    def serve_forever(self) -> None:
        """Run the event loop in this thread until ``shutdown`` (from another thread): waitress's
        loop, which also ends the answers of each burst's Stops once it has read them."""
        w = self._waitress
        self._loop_ident = threading.get_ident()
        poll = wasyncore.poll2 if w.adj.asyncore_use_poll else wasyncore.poll
        try:
            while w._map:
                poll(w.adj.asyncore_loop_timeout, w._map)
                if self._held:
                    self._read_burst(poll)
                    self._stop_held()
        except (SystemExit, KeyboardInterrupt):
            w.task_dispatcher.shutdown()
        finally:
            self._stop_held()
            self._stopped.set()

    def _read_burst(self, poll) -> None:
        """After a pass that read Stops, pass on without waiting while each pass reads another or
        accepts a connection (which may bring one), up to ``BURST_S``: the Stops that come
        together are all read before any of their answers ends. Each end (and its Stop's thread)
        takes the GIL from the loop, which then read the rest of a burst behind them: 64 Stops
        sent within 2 ms were read over 20 to 75 ms."""
        channels = self._waitress._map
        until = time.monotonic() + BURST_S
        while time.monotonic() < until:
            seen = len(self._held), len(channels)
            poll(0.0, channels)
            if (len(self._held), len(channels)) == seen:
                return

    def _add_task(self, channel) -> None:
        """A channel has a request for a thread. A Stop the loop may end waits for its burst's end."""
        request = channel.requests[0] if channel.requests else None
        stoppable = getattr(request, "stoppable", None)
        if stoppable is not None and threading.get_ident() == self._loop_ident:
            if not self._held:
                self._burst_begins()
            self._held.append((channel, request))
        else:
            self._waitress.task_dispatcher.add_task(channel)

    def _burst_begins(self) -> None:
        """The loop holds a first Stop: until ``_stop_held`` has ended the burst's answers, the
        interpreter's switch interval is ``BURST_SWITCH_S``.

        With 64 answers streaming, a hundred threads wait for the GIL at any moment; at the usual
        5 ms one of them makes the loop hand it over, and the loop then waits behind all of them
        (gaps of 3 to 10 ms between one Stop's read and the next). The burst is bounded (its reads
        by ``BURST_S``, then one cancel each), so the others wait for it once instead."""
        self._usual_switch = sys.getswitchinterval()
        sys.setswitchinterval(max(self._usual_switch, BURST_SWITCH_S))

    def _stop_held(self) -> None:
        """End the held Stops' answers, one after another, then hand the Stops to the threads: each
        finds its answer ended and answers ``stopped`` as the route does."""
        held, self._held = self._held, []
        if not held:
            return
        try:
            for _, request in held:
                # its lines are written by the Stop's thread: the loop keeps the GIL from the
                # first cancel to the last (log.deferred), and it is back to reading at once
                with log.deferred() as request.lines:
                    try:
                        if request.stoppable.cancel(Reason.STOPPED):
                            request.stopped_in_loop = request.stoppable
                    except Exception:  # the loop goes on: the thread serves this Stop as ever
                        log.log.exception("a Stop failed in the event loop; its thread serves it")
        finally:
            sys.setswitchinterval(self._usual_switch)  # the burst is over
        for channel, _ in held:
            self._waitress.task_dispatcher.add_task(channel)

    def start(self) -> Server:
        """Run the event loop in a background thread (tests, benchmarks)."""
        self._loop = threading.Thread(target=self.serve_forever, name="jarvis-waitress-loop")
        self._loop.start()
        return self

    def shutdown(self, timeout: float | None = None) -> list:
        """Stop accepting, end every stream with its answer stored, stop waitress: every wait
        draws on one deadline."""
        timeout = self.jarvis.config.shutdown_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout

        def left_s() -> float:
            return max(0.0, deadline - time.monotonic())

        self._call_in_loop(self._close_listener, deadline)
        left = self.jarvis.shutdown(left_s() * 0.8)  # the rest lets end events reach clients
        self._wait_flushed(deadline)
        self._call_in_loop(self._close_all, deadline)
        self._waitress.task_dispatcher.shutdown(cancel_pending=True, timeout=left_s())
        if self._loop is not None:
            self._loop.join(left_s())
            if self._loop.is_alive():
                log.event("shutdown_loop_left", logging.WARNING)
        log.event("server_stopped", streams_left=len(left))
        return left

    def _call_in_loop(self, fn, deadline: float) -> None:
        done = threading.Event()

        def thunk():
            try:
                fn()
            finally:
                done.set()

        if self._stopped.is_set():
            return
        self._waitress.trigger.pull_trigger(thunk)
        if not done.wait(max(0.0, deadline - time.monotonic())):
            log.event("shutdown_loop_unresponsive", logging.WARNING)

    def _close_listener(self) -> None:
        self._waitress.accepting = False
        self._waitress.del_channel()
        self._waitress.socket.close()
        if self.unix_socket:
            with contextlib.suppress(FileNotFoundError):  # removed by someone else: nothing to do
                os.unlink(self.unix_socket)

    def _close_all(self) -> None:
        for channel in list(self._waitress._map.values()):
            if channel is not self._waitress.trigger:
                channel.close()
        self._waitress.trigger.close()

    def _wait_flushed(self, deadline: float) -> None:
        # let the end events of cancelled streams reach their clients
        while time.monotonic() < deadline:
            busy = [
                ch
                for ch in list(self._waitress._map.values())
                if getattr(ch, "requests", None) or getattr(ch, "total_outbufs_len", 0)
            ]
            if not busy:
                return
            self._stopped.wait(0.01)
