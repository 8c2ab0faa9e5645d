"""``jarvis serve``: run the server under waitress, refusing to face the network without sign-in."""

from __future__ import annotations

import os
import signal
import threading

from .common import BACKENDS, EXIT_OK, EXIT_USAGE, Abort, is_loopback


def add_parser(sub) -> None:
    serve = sub.add_parser("serve", help="run the server under waitress")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads", type=int, help="waitress threads (default: JARVIS_MAX_STREAMS + 4)")
    serve.add_argument("--backend", choices=BACKENDS, help="overrides JARVIS_BACKEND")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve other machines with no account (not recommended)",
    )
    serve.set_defaults(run=cmd_serve)


def cmd_serve(args) -> int:
    from ..web.server import Server

    app = _create_app(args)
    j = app.extensions["jarvis"]
    _guard_exposure(args.host, j)
    unix_socket = j.config.listen_unix or None
    try:
        server = Server(app, host=args.host, port=args.port, threads=args.threads, unix_socket=unix_socket)
    except OSError as e:
        where = unix_socket or f"{args.host}:{args.port}"
        raise Abort(f"cannot listen on {where}: {e.strerror}") from None
    stopper = _stop_on_signals(server)
    print(
        f"Jarvis listening on {_address(app, server)} ({j.upstream.name}: {j.upstream.default_model})",
        flush=True,
    )
    server.serve_forever()
    if stopper:
        stopper[0].join(j.config.shutdown_timeout_s + 2)
    return EXIT_OK


def _create_app(args):
    """The app, with the command line's settings over the environment's."""
    from .. import create_app
    from ..config import ConfigError
    from ..errors import StoreError

    overrides = {"backend": args.backend} if args.backend else {}
    if args.insecure_no_auth:
        overrides["insecure_no_auth"] = True
    if not is_loopback(args.host) and args.host not in ("0.0.0.0", "::", ""):
        # the address it listens on is a name clients use for it
        overrides["allowed_hosts"] = ",".join(
            filter(None, (os.environ.get("JARVIS_ALLOWED_HOSTS"), args.host))
        )
    try:
        return create_app(overrides)
    except ConfigError as e:
        raise Abort(str(e), EXIT_USAGE) from None
    except StoreError as e:  # PostgreSQL unreachable, say: the message names it without its password
        raise Abort(e.message) from None


def _guard_exposure(host: str, j) -> None:
    """Refuse a non-loopback address with no account (unless told to), and warn of any exposure."""
    from .. import log

    if is_loopback(host):
        return
    if j.accounts.exist():
        log.log.warning(
            "listening on %s: reachable from other machines; every request needs sign-in, and only "
            "loopback names and JARVIS_ALLOWED_HOSTS are answered",
            host,
        )
    elif not j.config.insecure_no_auth:
        raise Abort(
            f"refusing to listen on {host} with no account: anyone who reaches the port could "
            "read and drive Jarvis. Create one with `jarvis user add NAME`, or pass --insecure-no-auth.",
            EXIT_USAGE,
        )
    else:
        log.log.warning(
            "INSECURE: serving %s with no authentication (--insecure-no-auth); only loopback names and "
            "JARVIS_ALLOWED_HOSTS are answered",
            host,
        )


def _stop_on_signals(server) -> list[threading.Thread]:
    """SIGTERM and SIGINT shut the server down; the list receives the thread that does it."""
    stopper: list[threading.Thread] = []

    def on_signal(signum, frame):
        if not stopper:  # shut down from a thread: the handler runs inside the event loop
            stopper.append(threading.Thread(target=server.shutdown, name="jarvis-shutdown"))
            stopper[0].start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stopper


def _address(app, server) -> str:
    """Where to open Jarvis: with the local token while no account exists, so the link signs in."""
    j = app.extensions["jarvis"]
    if j.config.listen_unix:
        return server.url
    address = server.url + "/"
    if not j.accounts.exist() and not j.config.insecure_no_auth:
        address += "?token=" + app.extensions["jarvis.local_token"]  # open this to sign in
    return address
