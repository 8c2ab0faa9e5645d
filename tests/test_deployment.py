"""docs/deployment.md followed as a non-root service user, on a fresh, non-editable install."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import pytest
import requests

from tests.conftest import HTTP_TIMEOUT, ROOT, free_port, stop_process

SERVICE_USER = "nobody"  # stands in for the doc's `useradd --system jarvis`: any account but root
# the distribution's python3, as on a fresh server (this test's own may live where others cannot read)
SYSTEM_PYTHON = "/usr/bin/python3"
PASSWORD = "correct horse battery"

pytestmark = [
    pytest.mark.slow,  # a fresh, non-editable install
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="acting as a service user needs root"),
    pytest.mark.skipif(not shutil.which("runuser"), reason="needs runuser (util-linux)"),
    pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs the system python3"),
]


def _doc_unit() -> tuple[dict, str]:
    """The Environment= settings and the ExecStart= command of the doc's systemd unit."""
    text = open(os.path.join(ROOT, "docs", "deployment.md")).read()
    unit = text[text.index("[Service]") : text.index("[Install]")]
    env = dict(re.findall(r"^Environment=([A-Z_]+)=(.*)$", unit, re.M))
    return env, re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)


def _run(*command: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """One step of the install, quiet unless it fails, which it must not, within ``timeout``."""
    return subprocess.run(command, check=True, capture_output=True, timeout=timeout, **kw)


@pytest.fixture
def root():
    """A stand-in for / that the service user can traverse (pytest's tmp_path is root's alone)."""
    path = tempfile.mkdtemp(prefix="jarvis-deploy-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def test_the_deployment_doc_works_for_a_service_user(root, fake, tmp_path):
    # as root: a non-editable install into a venv the service user cannot write to
    venv = f"{root}/opt/jarvis/.venv"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), ROOT)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", venv], check=True, timeout=120)
    wheel = next(p for p in os.listdir(tmp_path) if p.endswith(".whl"))
    _run(f"{venv}/bin/pip", "install", "-q", "--no-deps", "--no-index", str(tmp_path / wheel))
    site = _run(
        f"{venv}/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", text=True
    ).stdout.strip()
    here = sysconfig.get_paths()["purelib"]
    readable = subprocess.run(
        ["runuser", "-u", SERVICE_USER, "--", "test", "-r", os.path.join(here, "flask", "__init__.py")],
        timeout=30,
    )
    if readable.returncode == 0:
        # the dependencies come from this environment: offline and quick
        with open(os.path.join(site, "deps.pth"), "w") as f:
            f.write(here + "\n")
    else:  # this environment sits where the service user cannot read (a 0700 folder): install them
        _run(f"{venv}/bin/pip", "install", "-q", str(tmp_path / wheel), timeout=300)
    where = _run(f"{venv}/bin/python", "-c", "import jarvis; print(jarvis.__file__)", text=True, cwd=root)
    assert where.stdout.startswith(site), where.stdout  # not this checkout

    # systemd's StateDirectory=jarvis with StateDirectoryMode=0700
    state = f"{root}/var/lib/jarvis"
    os.makedirs(state, mode=0o700)
    account = pwd.getpwnam(SERVICE_USER)
    os.chown(state, account.pw_uid, account.pw_gid)

    settings, exec_start = _doc_unit()
    env = {k: v.replace("/var/lib/jarvis", state) for k, v in settings.items()}
    env.update(
        PATH="/usr/bin:/bin",
        STATE_DIRECTORY=state,
        JARVIS_OLLAMA_URL=fake.url,
        JARVIS_MODEL="tiny",
        JARVIS_BACKEND="ollama",
    )
    assert env["JARVIS_INSTANCE_DIR"] == state

    command = ["runuser", "-u", SERVICE_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items())]

    def as_service(*args, stdin="", **kw):
        return subprocess.run(
            [*command, f"{venv}/bin/jarvis", *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=root,
            **kw,
        )

    added = as_service("user", "add", "alice", stdin=PASSWORD + "\n", timeout=60)
    assert added.returncode == 0, added.stderr
    port = free_port()
    args = exec_start.replace("/opt/jarvis/.venv/bin/jarvis ", "").replace("8000", str(port)).split()
    proc = subprocess.Popen(
        [*command, f"{venv}/bin/jarvis", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line, line + proc.stderr.read() if proc.poll() is not None else line
        url = f"http://127.0.0.1:{port}"
        browser = requests.Session()
        signed = browser.post(
            url + "/login", json={"name": "alice", "password": PASSWORD}, timeout=HTTP_TIMEOUT
        )
        assert signed.status_code == 200
        browser.headers["X-CSRF-Token"] = signed.json()["csrf_token"]
        assert browser.post(url + "/api/sessions", timeout=HTTP_TIMEOUT).status_code == 201
    finally:
        stop_process(proc)
        proc.stderr.close()
    checked = as_service("check", timeout=60)
    assert "ok   database" in checked.stdout and f"instance folder {state} is private" in checked.stdout
    # nothing was written beside the code, and everything Jarvis keeps is the service user's alone
    assert not os.path.exists(f"{root}/opt/jarvis/.venv/var")
    assert os.stat(state).st_mode & 0o777 == 0o700
    for name in os.listdir(state):
        info = os.stat(os.path.join(state, name))
        assert info.st_uid == account.pw_uid and info.st_mode & 0o777 == 0o600, name
