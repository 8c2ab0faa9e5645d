"""The ``jarvis`` command: serve, chat, check."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENDED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_URL = "http://127.0.0.1:8000"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jarvis", description="A chat-assistant server that never hangs.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server under waitress")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads", type=int, help="waitress threads (default: JARVIS_MAX_STREAMS + 4)")
    serve.add_argument("--backend", choices=("auto", "ollama", "local"), help="overrides JARVIS_BACKEND")

    chat = sub.add_parser("chat", help="send a prompt and stream the answer to stdout")
    chat.add_argument("prompt", nargs="?", help="the prompt (default: read from stdin)")
    chat.add_argument("--session", help="continue this session (default: a new one)")
    chat.add_argument("--model", help="model to answer with")
    chat.add_argument("--url", default=os.environ.get("JARVIS_URL", DEFAULT_URL), help="server URL ($JARVIS_URL)")

    args = parser.parse_args(argv)
    return {"serve": cmd_serve, "chat": cmd_chat}[args.command](args)


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"jarvis: {message}", file=sys.stderr)
    return code


def cmd_serve(args) -> int:
    from . import create_app, log
    from .config import ConfigError
    from .server import Server

    try:
        app = create_app({"backend": args.backend} if args.backend else None)
    except ConfigError as e:
        return _fail(str(e), EXIT_USAGE)
    try:
        server = Server(app, host=args.host, port=args.port, threads=args.threads)
    except OSError as e:
        return _fail(f"cannot listen on {args.host}:{args.port}: {e.strerror}")
    if args.host in ("0.0.0.0", "::", ""):
        log.log.warning("listening on all interfaces: anyone who can reach port %d can use Jarvis", args.port)
    stopper: list[threading.Thread] = []

    def on_signal(signum, frame):
        if not stopper:  # shut down from a thread: the handler runs inside the event loop
            stopper.append(threading.Thread(target=server.shutdown, name="jarvis-shutdown"))
            stopper[0].start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    j = app.extensions["jarvis"]
    print(f"Jarvis listening on {server.url} ({j.upstream.name}: {j.upstream.default_model})", flush=True)
    server.serve_forever()
    if stopper:
        stopper[0].join(j.config.shutdown_timeout_s + 2)
    return EXIT_OK


def cmd_chat(args) -> int:
    import requests

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        return _fail("no prompt given (pass it as an argument or on stdin)", EXIT_USAGE)
    base = args.url.rstrip("/")
    timeout = (5, 330)
    try:
        session = args.session or requests.post(base + "/api/sessions", timeout=timeout).json()["id"]
        body = {"content": prompt} | ({"model": args.model} if args.model else {})
        response = requests.post(f"{base}/api/sessions/{session}/messages", json=body, stream=True, timeout=timeout)
    except requests.RequestException as e:
        return _fail(f"cannot reach Jarvis at {base}: {type(e).__name__}")
    if response.status_code != 200:
        return _fail(_error_message(response))
    print(f"session {session}", file=sys.stderr)
    try:
        end = _print_stream(response)
    except KeyboardInterrupt:
        requests.post(f"{base}/api/sessions/{session}/stop", timeout=5)
        response.close()
        print("\n[stopped]", file=sys.stderr)
        return EXIT_INTERRUPTED
    except requests.RequestException as e:
        return _fail(f"connection lost mid-answer: {type(e).__name__}")
    finally:
        response.close()
    print()
    if end is None:
        return _fail("the answer ended without an end event")
    if end.get("error"):
        return _fail(end["error"]["message"])
    if end["status"] != "completed":
        return _fail(f"answer {end['status']}", EXIT_ENDED)
    return EXIT_OK


def _print_stream(response) -> dict | None:
    """Write token text to stdout as it arrives; return the end event's data."""
    name = None
    for raw in response.iter_lines(chunk_size=None, decode_unicode=False):
        line = raw.decode("utf-8")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            if name == "token":
                sys.stdout.write(data["text"])
                sys.stdout.flush()
            elif name == "end":
                return data
    return None


def _error_message(response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}"
    if response.status_code == 503 and response.headers.get("Retry-After"):
        message += f" (retry after {response.headers['Retry-After']} s)"
    return message


if __name__ == "__main__":
    sys.exit(main())
