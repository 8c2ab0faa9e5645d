"""The servers under test, each in its own process, and what /proc says about them.

Jarvis runs as its users run it (``jarvis serve``), the plain-WSGI variant
as ``python -m waitress wsgi:app``, the reference as ``python -m
bench.reference``. Output goes to files, never to pipes nobody reads, and
every start and stop is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .client import LOCAL_TOKEN, Control

REPO = Path(__file__).resolve().parent.parent
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class ProcStat:
    """One look at a process: CPU seconds used, resident KB, threads, open fds."""

    cpu_s: float
    rss_kb: int
    threads: int
    fds: int


def proc_stat(pid: int) -> ProcStat:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # after the command name: state is field 3, utime 14, stime 15, rss 24 (1-based, man 5 proc)
    utime, stime, rss_pages = int(fields[11]), int(fields[12]), int(fields[21])
    return ProcStat(
        cpu_s=(utime + stime) * TICK_S,
        rss_kb=rss_pages * PAGE_KB,
        threads=len(os.listdir(f"/proc/{pid}/task")),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server under test: started, waited for, and stopped within bounds."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], workdir: Path, port: int | None = None
    ):
        self.name = name
        self.cmd = cmd
        self.out_path = workdir / f"{_slug(name)}.out"
        self.err_path = workdir / f"{_slug(name)}.log"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        self.pid = self.proc.pid
        self.url = f"http://127.0.0.1:{port}" if port else self._url_from_output(20.0)
        self._wait_healthy(20.0)

    def _url_from_output(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # the address without the ?token= that follows it while no account exists
            found = re.search(rb"listening on (http://[^/\s]+)", self.out_path.read_bytes())
            if found:
                return found.group(1).decode()
            self._check_alive()
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} printed no address within {timeout} s; see {self.err_path}")

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            control = Control(self.url, timeout=1.0)
            try:
                if control.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.02)
            finally:
                control.close()
        raise RuntimeError(f"{self.name} was not healthy within {timeout} s; see {self.err_path}")

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.err_path.read_bytes()[-2000:].decode("utf-8", "replace")
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{tail}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stat(self) -> ProcStat:
        return proc_stat(self.pid)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code (None if it had to be killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def base_env() -> dict[str, str]:
    """The caller's environment without JARVIS_* settings; this checkout's code comes first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JARVIS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["JARVIS_LOCAL_TOKEN"] = LOCAL_TOKEN
    return env


def jarvis_env(
    upstream_url: str, model: str, database: Path, backend: str = "ollama", **extra: str
) -> dict[str, str]:
    env = base_env()
    env.update(
        {"JARVIS_OPENAI_URL" if backend == "openai" else "JARVIS_OLLAMA_URL": upstream_url},
        JARVIS_MODEL=model,
        JARVIS_DATABASE=str(database),
        JARVIS_BACKEND=backend,
    )
    env.update(extra)
    return env


def jarvis_command() -> list[str]:
    script = Path(sys.executable).parent / "jarvis"
    return [str(script)] if script.exists() else [sys.executable, "-m", "jarvis.cli"]


def start_jarvis(
    workdir: Path, upstream_url: str, model: str, max_streams: int, backend: str = "ollama"
) -> ServerProcess:
    database = workdir / ("jarvis.sqlite3" if backend == "ollama" else f"jarvis-{backend}.sqlite3")
    env = jarvis_env(upstream_url, model, database, backend, JARVIS_MAX_STREAMS=str(max_streams))
    name = "jarvis serve" if backend == "ollama" else f"jarvis serve ({backend})"
    return ServerProcess(name, [*jarvis_command(), "serve", "--port", "0"], env, workdir)


def start_plain(
    workdir: Path, upstream_url: str, model: str, threads: int, lookahead: int = 0, **extra: str
) -> ServerProcess:
    """Jarvis's wsgi:app under a plain waitress: without lookahead only writes reveal a gone client."""
    port = free_port()
    name = "plain waitress + lookahead" if lookahead else "plain waitress"
    database = workdir / f"plain{lookahead}.sqlite3"
    env = jarvis_env(upstream_url, model, database, JARVIS_MAX_STREAMS=str(threads - 4), **extra)
    cmd = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", f"--threads={threads}"]
    if lookahead:
        cmd.append(f"--channel-request-lookahead={lookahead}")
    return ServerProcess(name, [*cmd, "wsgi:app"], env, workdir, port=port)


def start_reference(workdir: Path, upstream_url: str, model: str, threads: int) -> ServerProcess:
    env = base_env()
    cmd = [sys.executable, "-m", "bench.reference", "--port", "0", "--threads", str(threads)]
    cmd += ["--upstream", upstream_url, "--model", model]
    return ServerProcess("reference", cmd, env, workdir)
