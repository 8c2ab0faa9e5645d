"""A real PostgreSQL server for the tests: a fresh cluster in a temporary folder on a free loopback port."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile


def _bin() -> str:
    """Debian's folder of the newest PostgreSQL installed (15 on bookworm)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    newest = max(found, key=_version, default="/usr/lib/postgresql/15/bin/pg_ctl")
    return os.path.dirname(newest)


def _version(pg_ctl: str) -> tuple[int, ...]:
    return tuple(int(n) for n in pg_ctl.split("/")[4].split(".") if n.isdigit())


BIN = _bin()
START_TIMEOUT_S = 30


def missing() -> str | None:
    """Why a server cannot be started here, or None."""
    if not os.path.exists(os.path.join(BIN, "pg_ctl")):
        return f"PostgreSQL binaries not found in {BIN} (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return "psycopg and psycopg_pool are not installed (pip install '.[scale]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no postgres user to run initdb as"
    return None


class PostgresServer:
    """initdb, pg_ctl start and stop; as the postgres user when the tests run as root."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="jarvis-pg-")
        self.data = os.path.join(self.folder, "data")
        self.port = _free_port()
        self._names = itertools.count()
        if os.geteuid() == 0:  # initdb refuses root
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        else:
            self._as = []
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = os.path.join(self.folder, "log")
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", log, "-w", "start")
        return self

    def stop(self, mode: str = "fast", missing_ok: bool = False) -> None:
        if missing_ok and not os.path.exists(os.path.join(self.data, "postmaster.pid")):
            return
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"jarvis_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as db:
            db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as, os.path.join(BIN, tool), *args],
            check=True, capture_output=True, timeout=START_TIMEOUT_S, cwd=self.folder,
        )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
