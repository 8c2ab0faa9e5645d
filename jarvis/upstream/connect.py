"""A connected socket to a model server, cancellable from its first system call.

Its shutdown is registered on the stream's ``CancelScope`` before it even
connects, so ``cancel()`` from another thread breaks whatever call the worker
blocks in (``connect``, the TLS handshake, ``recv``); the name lookup, every
connect attempt and the handshake share one deadline.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time

from .. import gil
from ..cancel import CancelScope


def open_socket(
    host: str, port: int, tls: bool, timeout: float, cancel: CancelScope, undo: list
) -> socket.socket:
    """A connected socket (TLS when ``tls``), each shutdown registered on ``cancel``, its undo
    appended to ``undo``; the handshake keeps the connect's timeout."""
    sock = connect(host, port, timeout, cancel, undo)
    if not tls:
        return sock
    context = ssl.create_default_context()
    sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    # the TLS socket takes over the descriptor: register it before the handshake blocks
    undo.append(cancel.on_cancel(lambda sock=sock: gil.shutdown(sock)))
    sock.do_handshake()
    return sock


def connect(host: str, port: int, timeout: float, cancel: CancelScope, undo: list) -> socket.socket:
    """A connected socket whose shutdown is registered on ``cancel`` before it connects; the
    name lookup and every connect attempt share one deadline of ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in _resolve(host, port, deadline, cancel):
        sock = socket.socket(family, kind, proto)
        # shutdown wakes a blocked connect as well as a blocked recv
        undo.append(cancel.on_cancel(lambda sock=sock: gil.shutdown(sock)))
        if cancel.cancelled:  # checkpoint: before each connect (a shutdown before it does nothing)
            sock.close()
            raise ConnectionAbortedError("cancelled before connecting")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no connection to {host} within {timeout:g} s")
            sock.settimeout(left)
            sock.connect(address)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error


def _resolve(host: str, port: int, deadline: float, cancel: CancelScope) -> list:
    """``host``'s addresses, by ``deadline`` and abandoned at once on cancel.

    A lookup cannot be interrupted (the C resolver blocks its thread), so a name is
    looked up in a thread of its own that we stop waiting for; an address needs no lookup."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass  # a name: look it up below
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    found: list = []
    done = threading.Event()

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            found.append(e)
        finally:
            done.set()

    # a daemon: a hung resolver must not hold the process at exit; it ends when the lookup does
    threading.Thread(target=lookup, name=f"jarvis-resolve-{host}", daemon=True).start()
    undo = cancel.on_cancel(done.set)
    try:
        done.wait(max(0.0, deadline - time.monotonic()))
    finally:
        undo()
    if cancel.cancelled:  # checkpoint: cancelled while the name was looked up
        raise ConnectionAbortedError("cancelled while looking up the name")
    if not found:
        raise TimeoutError(f"looking up {host} took longer than the connect timeout")
    if isinstance(found[0], OSError):
        raise found[0]
    return found[0]
