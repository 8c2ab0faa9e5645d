"""A real redis-server on a free loopback port, for the tests and the benchmarks of several processes."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from tests.conftest import wait_for

REDIS_SERVER = shutil.which("redis-server")


@dataclass
class RedisServer:
    """A real redis-server on a free loopback port, with no persistence, in a temporary folder."""

    port: int
    folder: str
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", self.folder]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._pings, timeout=5, what="redis-server to answer")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def client(self):
        import redis  # the scale extra: a test without it is skipped before it gets here

        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)

    def commands(self) -> dict[str, int]:
        """Calls per command so far (INFO commandstats), without the INFO calls themselves."""
        with self.client() as r:
            stats = r.info("commandstats")
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if k != "cmdstat_info"}

    def _pings(self) -> bool:
        from redis import ConnectionError

        try:
            with self.client() as r:
                return r.ping()
        except ConnectionError:
            return False
