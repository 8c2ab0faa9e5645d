"""``jarvis user`` and ``jarvis token``: accounts and the API tokens scripts sign in with."""

from __future__ import annotations

import sys

from .common import EXIT_OK, EXIT_USAGE, fail, make_folder


def add_parsers(sub) -> None:
    user = sub.add_parser("user", help="manage accounts")
    user.add_argument("action", choices=("add", "list", "remove", "passwd"))
    user.add_argument("name", nargs="?")
    user.set_defaults(run=cmd_user)

    token = sub.add_parser("token", help="manage API tokens for scripts")
    token.add_argument("action", choices=("create", "list", "revoke"))
    token.add_argument("id", nargs="?", type=int, help="the token id, for revoke")
    token.add_argument("--user", help="the account the token acts for (create)")
    token.add_argument("--name", default="", help="a label for the token (create)")
    token.set_defaults(run=cmd_token)


def cmd_user(args) -> int:
    from ..errors import JarvisError

    accounts = _accounts()
    try:
        if args.action == "list":
            for row in accounts.list():
                print(f"{row['name']}\t{row['tokens']} token(s)")
            return EXIT_OK
        if not args.name:
            return fail(f"jarvis user {args.action} needs a NAME", EXIT_USAGE)
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
        return fail(getattr(e, "message", str(e)))
    return EXIT_OK


def cmd_token(args) -> int:
    from ..errors import JarvisError

    accounts = _accounts()
    try:
        if args.action == "create":
            if not args.user:
                return fail("jarvis token create needs --user NAME", EXIT_USAGE)
            print(accounts.create_token(args.user, args.name))
            print("shown once: keep it now (JARVIS_TOKEN=... jarvis chat)", file=sys.stderr)
        elif args.action == "list":
            for row in accounts.tokens():
                print(f"{row['id']}\t{row['user']}\t{row['name']}")
        else:
            if args.id is None:
                return fail("jarvis token revoke needs the token id (see jarvis token list)", EXIT_USAGE)
            accounts.revoke(args.id)
            print(f"revoked token {args.id}; its answers still streaming end within a second")
    except JarvisError as e:
        return fail(e.message)
    return EXIT_OK


def _accounts():
    from .. import private_dir
    from ..config import Config
    from ..store import Store
    from ..web.accounts import Accounts

    cfg = Config.from_env()
    private_dir(cfg.instance_path())
    make_folder(cfg.database_path())
    return Accounts(Store(cfg.database_path(), pool_size=2))


def _read_password(prompt: str) -> str:
    import getpass

    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("again: ") != first:
        raise ValueError("the passwords differ")
    return first
