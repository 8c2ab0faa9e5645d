"""The ``jarvis`` command: one module per command group, wired to one argument parser here.

``serve.py`` runs the server, ``chat.py`` talks to a running one over HTTP, ``check.py`` checks a
set-up, ``users.py`` keeps accounts and API tokens, ``db.py`` copies the history; ``common.py`` holds
what they share. The top floor: it may import any wing (the factory, the store, the web side, the
upstreams, the foundation), and nothing imports it.
"""

from __future__ import annotations

import argparse

from . import chat, check, db, serve, users
from .common import Abort, fail


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except Abort as e:
        return fail(e.message, e.code)


def parser() -> argparse.ArgumentParser:
    """``jarvis`` and its commands, in the order ``jarvis --help`` lists them."""
    top = argparse.ArgumentParser(prog="jarvis", description="A chat-assistant server that never hangs.")
    top.add_argument("--version", action="version", version=f"jarvis {_version()}")
    sub = top.add_subparsers(dest="command", required=True)
    serve.add_parser(sub)
    chat.add_parser(sub)
    users.add_parsers(sub)  # user, token
    check.add_parser(sub)
    db.add_parser(sub)
    return top


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jarvis")
    except metadata.PackageNotFoundError:
        return "(not installed)"
