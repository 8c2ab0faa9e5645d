"""The MCP servers named in JARVIS_MCP_CONFIG, read once at start-up.

The file is the format MCP clients share (Claude Desktop, LibreChat, Cursor):
``{"mcpServers": {"NAME": {"command", "args", "env"}, "NAME2": {"url", "headers"}}}``, plus
Jarvis's own ``"eager": true``. Only this file adds servers: it is owned by whoever runs Jarvis.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from ..config import ConfigError

# the model sees NAME__TOOL: a server name without "__" keeps the split unambiguous
NAME = re.compile(r"^[A-Za-z0-9-]+(_[A-Za-z0-9-]+)*$")
SEPARATOR = "__"
# what a stdio server gets from Jarvis's own environment: enough to find programs and write text
PASSED_ENV = ("PATH", "HOME", "LANG")


@dataclass(frozen=True)
class ServerSpec:
    """One entry of ``mcpServers``: a program Jarvis runs (stdio) or a URL it calls (http)."""

    name: str
    transport: str  # "stdio" or "http"
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict = field(default_factory=dict, repr=False)  # may hold the server's own keys
    url: str = ""
    headers: dict = field(default_factory=dict, repr=False)
    eager: bool = False

    def child_env(self) -> dict[str, str]:
        """The whole environment of a stdio server: the file's ``env`` over a minimal PATH/HOME/LANG,
        nothing else of Jarvis's (no JARVIS_*, no keys)."""
        base = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        base.setdefault("LANG", "C.UTF-8")
        return base | self.env


def load(path: str) -> list[ServerSpec]:
    """The servers of the file at ``path``; ConfigError naming the file and the entry if malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"JARVIS_MCP_CONFIG: cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"JARVIS_MCP_CONFIG: {path} is not JSON: {e}") from None
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(f'JARVIS_MCP_CONFIG: {path} has no "mcpServers" object')
    return [parse(name, entry, path) for name, entry in servers.items()]


def parse(name: str, entry: object, path: str = "JARVIS_MCP_CONFIG") -> ServerSpec:
    """One entry, checked: a stdio one has a command, an http one an http(s) URL."""
    where = f"JARVIS_MCP_CONFIG: {path}: server {name!r}"
    if not NAME.match(name) or len(name) > 32:
        raise ConfigError(f"{where}: a name is letters, digits, '-' and single '_', up to 32 characters")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object")
    eager = entry.get("eager", False)
    if not isinstance(eager, bool):
        raise ConfigError(f"{where}: eager must be true or false")
    if "url" in entry:
        url, headers = entry["url"], entry.get("headers", {})
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: url must start with http:// or https://")
        return ServerSpec(name, "http", url=url, headers=_strings(headers, f"{where}: headers"), eager=eager)
    command, args = entry.get("command"), entry.get("args", [])
    if not isinstance(command, str) or not command:
        raise ConfigError(f"{where} needs a command (stdio) or a url (streamable HTTP)")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{where}: args must be a list of strings")
    env = _strings(entry.get("env", {}), f"{where}: env")
    return ServerSpec(name, "stdio", command=command, args=tuple(args), env=env, eager=eager)


def _strings(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{where} must be an object of strings")
    return dict(value)
