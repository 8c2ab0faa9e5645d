"""Socket calls that cannot block, made without letting go of the GIL.

CPython lets go of the GIL around every socket call. For a call that cannot block (a shutdown; a
recv on a socket the event loop's poll has just found readable) that is only a chance for another
thread to take the GIL, and the caller then waits to get it back behind whoever took it: a switch
interval (5 ms) at worst each time, and longer while many threads want it. In a burst of 64 Stops
under ``jarvis serve`` the event loop made about 130 such calls (reading each Stop, shutting each
upstream down), and each woken answer's end or token took the GIL from it in between.

libc's calls through ``ctypes.PyDLL`` keep the GIL; where no libc can be loaded, the socket's own
methods are used, as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket


def _libc():
    try:
        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL is held across each call
        libc.shutdown.argtypes, libc.shutdown.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        libc.recv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        libc.recv.restype = ctypes.c_ssize_t
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def shutdown(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways, breaking any call another thread is blocked in on it; a
    socket already closed is left alone."""
    if _LIBC is None or type(sock) is not socket.socket:  # a TLS socket shuts down its own way
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by its owner: nothing left to break
        return
    # the descriptor is read and shut down under the GIL, so no close can reuse it in between;
    # -1 (closed already) or a socket not connected fails harmlessly, as above
    _LIBC.shutdown(sock.fileno(), socket.SHUT_RDWR)


def recv(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes ``sock`` has now, without waiting (b"": the peer closed); OSError as
    ``socket.recv`` raises it, BlockingIOError when nothing is there yet."""
    if _LIBC is None:
        return sock.recv(size, socket.MSG_DONTWAIT)
    buf = ctypes.create_string_buffer(size)
    while True:
        got = _LIBC.recv(sock.fileno(), buf, size, socket.MSG_DONTWAIT)
        if got >= 0:
            return buf.raw[:got]
        code = ctypes.get_errno()
        if code != errno.EINTR:  # retried, as socket.recv retries it
            raise OSError(code, os.strerror(code))
