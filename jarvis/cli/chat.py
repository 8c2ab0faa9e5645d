"""``jarvis chat``: send one prompt to a running Jarvis and stream its answer to stdout."""

from __future__ import annotations

import os
import signal
import sys

from .. import sse
from .common import EXIT_ENDED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Abort, fail, is_loopback

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT = (5, 330)  # seconds to connect, and to wait for each read (a model may take minutes to load)


def add_parser(sub) -> None:
    chat = sub.add_parser("chat", help="send a prompt and stream the answer to stdout")
    chat.add_argument("prompt", nargs="?", help="the prompt (default: read from stdin)")
    chat.add_argument("--session", help="continue this session (default: a new one)")
    chat.add_argument("--model", help="model to answer with")
    chat.add_argument(
        "--url", default=os.environ.get("JARVIS_URL", DEFAULT_URL), help="server URL ($JARVIS_URL)"
    )
    chat.add_argument(
        "--token",
        default=os.environ.get("JARVIS_TOKEN"),
        help="bearer token to send, to whatever host --url names ($JARVIS_TOKEN); without it, the local "
        "token of this machine's Jarvis is sent, and only to a loopback address (localhost, 127.0.0.1, ::1)",
    )
    chat.set_defaults(run=cmd_chat)


def cmd_chat(args) -> int:
    import requests

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        return fail("no prompt given (pass it as an argument or on stdin)", EXIT_USAGE)
    base = args.url.rstrip("/")
    http = _client(args.token, base)
    try:
        session = args.session or _new_session(http, base)
        body = {"content": prompt} | ({"model": args.model} if args.model else {})
        response = http.post(
            f"{base}/api/sessions/{session}/messages", json=body, stream=True, timeout=TIMEOUT
        )
    except requests.RequestException as e:
        return fail(f"cannot reach Jarvis at {base}: {type(e).__name__}")
    if response.status_code != 200:
        return fail(_error_message(response))
    print(f"session {session}", file=sys.stderr)
    return _read_answer(http, f"{base}/api/sessions/{session}/stop", response)


def _client(token: str | None, base: str):
    """An HTTP session that sends the given token, or the local one to a loopback address only."""
    from urllib.parse import urlsplit

    import requests

    http = requests.Session()
    if not token and is_loopback(urlsplit(base).hostname or ""):
        token = _local_token()  # it signs in to this machine's Jarvis: it never leaves the machine
        http.trust_env = False  # nor goes through a proxy named in the environment
    if token:
        http.headers["Authorization"] = "Bearer " + token
    return http


def _new_session(http, base: str) -> str:
    created = http.post(base + "/api/sessions", timeout=TIMEOUT)
    if created.status_code == 401 and "Authorization" not in http.headers:
        raise Abort(
            f"{_error_message(created)} (the local token goes only to a loopback address: "
            "pass --token or set JARVIS_TOKEN for another host)"
        )
    if created.status_code != 201:
        raise Abort(_error_message(created))
    return created.json()["id"]


def _read_answer(http, stop_url: str, response) -> int:
    """Print the answer as it streams; the first Ctrl-C asks the server to stop, the second quits."""
    import requests

    stopping: list[bool] = []

    def on_sigint(signum, frame):
        # first Ctrl-C: ask the server to stop and read the stream to its end event
        if stopping:
            raise KeyboardInterrupt
        stopping.append(True)
        try:
            http.post(stop_url, timeout=5)
        except requests.RequestException:
            raise KeyboardInterrupt from None

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        end = _print_stream(response)
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return EXIT_INTERRUPTED
    except requests.RequestException as e:
        return fail(f"connection lost mid-answer: {type(e).__name__}")
    finally:
        signal.signal(signal.SIGINT, previous)
        response.close()
    if stopping:
        print("\n[stopped]", file=sys.stderr)
        return EXIT_INTERRUPTED
    print()
    return _exit_code(end)


def _exit_code(end: dict | None) -> int:
    """The exit code an answer's end event calls for, with a line on stderr when it is not a success."""
    if end is None:
        return fail("the answer ended without an end event")
    if end.get("error"):
        return fail(end["error"]["message"])
    if end["status"] == "length":
        print("[cut off at the answer length limit]", file=sys.stderr)
        return EXIT_OK
    if end["status"] != "completed":
        why = f" ({end['reason']})" if end.get("reason") not in (None, end["status"]) else ""
        return fail(f"the answer was {end['status']}{why}", EXIT_ENDED)
    return EXIT_OK


def _print_stream(response) -> dict | None:
    """Write token text to stdout as it arrives; return the end event's data."""
    for name, data in _events(response):
        if name == "token":
            sys.stdout.write(data["text"])
            sys.stdout.flush()
        elif name == "end":
            return data
    return None


def _events(response):
    """The answer's SSE events as (name, data) pairs: the one place the chat command parses SSE."""
    return ((f.event, f.json()) for f in sse.frames(response.iter_content(chunk_size=None)))


def _error_message(response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}"
    if response.status_code == 503 and response.headers.get("Retry-After"):
        message += f" (retry after {response.headers['Retry-After']} s)"
    return message


def _local_token() -> str | None:
    """The server's local token, read from this machine's instance folder (None if unreadable)."""
    from ..config import Config, ConfigError

    try:
        cfg = Config.from_env()
    except ConfigError:
        return None
    if cfg.local_token:
        return cfg.local_token
    try:
        with open(os.path.join(cfg.instance_path(), "local_token")) as f:
            return f.read().strip() or None
    except OSError:
        return None  # another user's server, or none started yet: the server will say what it needs
