"""``jarvis db copy``: move the whole history to another database while Jarvis is stopped."""

from __future__ import annotations

import os

from .common import EXIT_OK, fail, make_folder

# a copy moves a whole history while Jarvis is stopped: its statements may take minutes, not the
# seconds JARVIS_DATABASE_TIMEOUT gives a request
COPY_TIMEOUT_S = 600.0


def add_parser(sub) -> None:
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
    db.set_defaults(run=cmd_db)


def cmd_db(args) -> int:
    """Copy the whole history into another database, and say what was copied."""
    from ..config import Config
    from ..errors import JarvisError
    from ..store import Store, dbcopy
    from ..store.engines import is_postgres, shown

    source_url = args.source or Config.from_env().database_path()
    if not is_postgres(source_url) and not os.path.exists(source_url):
        return fail(f"no database at {source_url}: set JARVIS_DATABASE or --from")
    try:
        make_folder(args.to)
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
        return fail(getattr(e, "message", str(e)))
    counts = ", ".join(f"{n} {table}" for table, n in copied.items())
    print(f"copied {counts} from {shown(source_url)} to {shown(args.to)}")
    return EXIT_OK
