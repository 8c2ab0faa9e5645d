"""The baseline: the design Jarvis replaces, written plainly, served the same way.

A registry of per-session cancel flags (``threading.Event``); a worker thread
per answer that reads Ollama with ``requests`` (``stream=True``,
``iter_lines``) and checks its flag between chunks; a new prompt cancels the
session's stream and joins its worker for up to 2 s; nothing closes the
upstream socket from outside. Cancelling also wakes the response at once, so
the numbers compare how each design reaches the upstream, not how fast a
queue is polled. Same SSE events as Jarvis (``start``, ``token``, ``end``,
``: hb``), same waitress thread count, history in memory.

Run: ``python -m bench.reference --port 0 --threads N --upstream URL``.
"""

from __future__ import annotations

import argparse
import json
import queue
import secrets
import sys
import threading

import requests
from flask import Flask, Response, abort, request
from waitress.server import create_server

JOIN_TIMEOUT_S = 2.0
HEARTBEAT_S = 1.0
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0  # bounds each silence between upstream bytes, not the answer
WAKE = ("wake", None)


def frame(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class Answer:
    """One streamed answer: its flag, its worker, and the queue between them."""

    def __init__(self, upstream: str, model: str, messages: list[dict]):
        self.upstream = upstream
        self.model = model
        self.messages = messages
        self.cancelled = threading.Event()
        self.reason = "stopped"
        self.items: queue.Queue = queue.Queue()
        self.text: list[str] = []
        self.worker = threading.Thread(target=self._read, name="reference-worker")

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()
            self.items.put(WAKE)

    def _read(self) -> None:
        body = {"model": self.model, "messages": self.messages, "stream": True}
        try:
            with requests.post(
                self.upstream + "/api/chat",
                json=body,
                stream=True,
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            ) as r:
                if r.status_code != 200:
                    self.items.put(("error", f"upstream answered HTTP {r.status_code}"))
                    return
                for line in r.iter_lines():
                    if self.cancelled.is_set():  # the flag, checked between chunks
                        return
                    if not line:
                        continue
                    obj = json.loads(line)
                    if obj.get("error"):
                        self.items.put(("error", str(obj["error"])))
                        return
                    text = (obj.get("message") or {}).get("content")
                    if text:
                        self.items.put(("token", text))
                    if obj.get("done"):
                        self.items.put(("done", None))
                        return
                self.items.put(("error", "upstream ended early"))
        except (requests.RequestException, ValueError) as e:
            self.items.put(("error", type(e).__name__))

    def events(self, on_end):
        """The SSE body; ``on_end`` runs once when it ends, however it ends."""
        finished = False
        try:
            yield frame("start", {"model": self.model})
            end: dict = {"status": "completed"}
            while True:
                try:
                    kind, value = self.items.get(timeout=HEARTBEAT_S)
                except queue.Empty:
                    yield b": hb\n\n"
                    continue
                if self.cancelled.is_set():
                    end = {"status": self.reason, "reason": self.reason}
                    break
                if kind == "token":
                    self.text.append(value)
                    yield frame("token", {"text": value})
                elif kind == "done":
                    break
                elif kind == "error":
                    end = {"status": "failed", "error": {"code": "upstream_error", "message": value}}
                    break
            finished = True
            yield frame("end", end)
        finally:
            if not finished:
                self.cancel("disconnected")  # a write failed: the client has gone
            on_end(self)


def create_app(upstream: str, model: str) -> Flask:
    app = Flask(__name__)
    lock = threading.Lock()
    streams: dict[str, Answer] = {}
    history: dict[str, list[dict]] = {}

    @app.post("/api/sessions")
    def new_session():
        sid = secrets.token_hex(8)
        with lock:
            history[sid] = []
        return {"id": sid}, 201

    @app.post("/api/sessions/<sid>/messages")
    def send(sid: str):
        content = (request.get_json(silent=True) or {}).get("content")
        if sid not in history or not content:
            abort(404 if sid not in history else 400)
        with lock:
            old = streams.get(sid)
        if old is not None:
            old.cancel("superseded")
            old.worker.join(JOIN_TIMEOUT_S)
        with lock:
            history[sid].append({"role": "user", "content": content})
            answer = Answer(upstream, model, list(history[sid]))
            streams[sid] = answer

        def on_end(a: Answer) -> None:
            with lock:
                if streams.get(sid) is a:
                    del streams[sid]
                history[sid].append({"role": "assistant", "content": "".join(a.text)})

        answer.worker.start()
        return Response(
            answer.events(on_end), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post("/api/sessions/<sid>/stop")
    def stop(sid: str):
        with lock:
            answer = streams.get(sid)
        if answer is not None:
            answer.cancel("stopped")
        return {"stopped": answer is not None}

    @app.get("/healthz")
    def healthz():
        with lock:
            return {"status": "ok", "active_streams": len(streams)}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--upstream", default="http://127.0.0.1:11434")
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args(argv)
    app = create_app(args.upstream.rstrip("/"), args.model)
    # as many connections as jarvis serve allows, so the stream count is bounded by the threads alone
    limit = max(100, args.threads * 4)
    server = create_server(
        app, host="127.0.0.1", port=args.port, threads=args.threads, connection_limit=limit
    )
    print(f"reference listening on http://127.0.0.1:{server.effective_port}", flush=True)
    server.run()  # ends with the process: SIGTERM's default action
    return 0


if __name__ == "__main__":
    sys.exit(main())
