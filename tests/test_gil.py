"""``jarvis.gil``: the socket calls the event loop and a cancel make without letting go of the GIL
behave as the socket's own methods do."""

from __future__ import annotations

import socket
import threading

import pytest

from jarvis import gil


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.mark.timeout(10)
def test_recv_takes_what_is_there_and_never_waits(pair):
    a, b = pair
    with pytest.raises(BlockingIOError):
        gil.recv(a, 8)  # a blocking socket too: nothing there is an error, not a wait
    b.sendall(b"hello world")
    assert gil.recv(a, 5) == b"hello"
    assert gil.recv(a, 100) == b" world"
    b.shutdown(socket.SHUT_WR)
    assert gil.recv(a, 100) == b""  # the peer closed


@pytest.mark.timeout(10)
def test_recv_of_a_closed_socket_raises_as_the_socket_does(pair):
    a, _ = pair
    a.close()
    with pytest.raises(OSError):
        gil.recv(a, 8)


@pytest.mark.timeout(10)
def test_shutdown_breaks_a_recv_blocked_in_another_thread(pair):
    # would hang: the reader waits for bytes that never come until the shutdown wakes it
    a, _ = pair
    a.settimeout(5)
    got = []
    reader = threading.Thread(target=lambda: got.append(a.recv(8)))
    reader.start()
    gil.shutdown(a)
    reader.join(5)
    assert got == [b""]


@pytest.mark.timeout(10)
def test_shutdown_of_a_closed_socket_leaves_the_descriptors_next_owner_alone(pair):
    # a cancel may come after the worker closed its socket: the number may be another's by then
    a, _ = pair
    old = a.fileno()
    a.close()
    c, d = socket.socketpair()
    try:
        gil.shutdown(a)  # fileno() is -1 now: shutdown(-1) fails, whoever holds `old`
        d.sendall(b"x")
        c.sendall(b"y")
        assert (c.recv(1), d.recv(1)) == (b"x", b"y"), f"descriptor {old} was reused and shut down"
    finally:
        c.close()
        d.close()
