"""A model server that accepts connections and never answers: a real listener on 127.0.0.1:0."""

from __future__ import annotations

import select
import socket
import threading


class HungServer:
    """Start with ``with HungServer() as hung:``; every request to ``hung.url`` waits forever."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="hung-server-accept")
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._sock], [], [], 0.05)
            if readable:
                conn, _ = self._sock.accept()
                self._held.append(conn)  # held open, never read, never answered
                self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        for conn in self._held:
            conn.close()
        self._sock.close()

    def __enter__(self) -> HungServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
