"""One frozen configuration object, read once from ``JARVIS_*`` variables.

Each field's environment variable is ``JARVIS_`` plus its name in capitals,
without the unit suffix: ``supersede_timeout_s`` is ``JARVIS_SUPERSEDE_TIMEOUT``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

MIN_SECRET_CHARS = 32


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _f(default, doc: str, *, minimum: float | None = None, choices: tuple = (), secret: bool = False):
    # a secret stays out of repr(), so no log line or traceback can show it
    return field(default=default, repr=not secret, metadata={"doc": doc, "min": minimum, "choices": choices})


def _seconds(default: float, doc: str, *, minimum: float = 0.01):
    """A duration in seconds; most must be above zero, or the wait they bound never happens."""
    return _f(default, doc, minimum=minimum)


def _count(default: int, doc: str, *, minimum: int = 1):
    """A count or a size; most must allow at least one."""
    return _f(default, doc, minimum=minimum)


@dataclass(frozen=True)
class Config:
    ollama_url: str = _f("http://127.0.0.1:11434", "Base URL of the Ollama server.")
    model: str = _f(
        "llama3.2", "Model used when a prompt names none (Ollama and OpenAI-compatible backends)."
    )
    backend: str = _f(
        "auto",
        "auto: Ollama if it answers at start-up, else the embedded model if installed; "
        "or ollama, openai, local.",
        choices=("auto", "ollama", "local", "openai"),
    )
    openai_url: str = _f(
        "http://127.0.0.1:8080/v1", "Base URL of an OpenAI-compatible server (JARVIS_BACKEND=openai)."
    )
    openai_api_key: str = _f(
        "", "Key sent as Authorization: Bearer to the OpenAI-compatible server; never logged.", secret=True
    )
    openai_api_key_file: str = _f("", "File holding that key instead (its first line).")
    openai_capabilities: str = _f(
        "tools",
        "What the OpenAI-compatible server's models can do, comma-separated from tools, vision, "
        "thinking, insert (a suffix, fill-in-the-middle): a request that needs another is refused (400) "
        "before it reaches the server.",
    )
    upstreams: str = _f(
        "",
        "Several model hosts, comma-separated KIND=URL[;max=N] (KIND: ollama or openai; N: that "
        "host's concurrent answers, default no limit); when set, JARVIS_BACKEND and "
        "JARVIS_OLLAMA_URL are not used.",
    )
    local_model: str = _f("", "Path of a GGUF file for the local backend (default: SmolLM2-135M).")
    local_embed_model: str = _f(
        "", "Path of an embedding GGUF the local backend embeds with (none: it refuses)."
    )
    local_max_tokens: int = _count(
        512,
        "Longest answer of the local model, in tokens, unless a chat or a request sets its own (0: up to its "
        "window); past it the answer ends as length, with a Continue button on the page.",
        minimum=0,
    )
    database: str = _f(
        "",
        "SQLite file for history, accounts and tokens (default: jarvis.sqlite3 in the instance folder), "
        "or a postgresql:// URL (needs the scale extra).",
    )
    database_timeout_s: float = _seconds(
        5.0,
        "Longest any database call may wait, in seconds (a pooled connection, a statement, a lock, "
        "SQLite's busy timeout); past it a request answers 503 database_unavailable.",
        minimum=0.1,
    )
    database_retry_s: float = _seconds(
        10.0,
        "Seconds an answer's final write is retried while the database is unavailable, then logged as lost.",
        minimum=0.0,
    )
    connect_timeout_s: float = _seconds(3.0, "Seconds to open a connection to the model server.")
    first_token_timeout_s: float = _seconds(
        300.0, "Seconds to wait for the first token (models take time to load)."
    )
    idle_timeout_s: float = _seconds(60.0, "Seconds of upstream silence allowed between tokens.")
    total_timeout_s: float = _seconds(900.0, "Longest an answer may stream, in seconds.")
    supersede_timeout_s: float = _seconds(
        2.0, "Seconds a new prompt waits for the session's previous stream to end.", minimum=0.0
    )
    cancel_timeout_s: float = _seconds(
        0.5, "Seconds cleanup waits for a cancelled worker before detaching it.", minimum=0.0
    )
    heartbeat_s: float = _seconds(
        1.0, "Seconds between SSE heartbeats; a host without lookahead sees a gone client within one of them."
    )
    disconnect_poll_s: float = _seconds(
        0.02, "Seconds between checks for gone clients (waitress with request lookahead).", minimum=0.001
    )
    flush_interval_s: float = _seconds(1.0, "Seconds between saves of a streaming answer.")
    detach_grace_s: float = _seconds(
        0.0,
        "Seconds an answer goes on after its page leaves, for a reload or a tab to rejoin (0: it ends).",
        minimum=0.0,
    )
    max_streams: int = _count(16, "Live streams allowed in the process; more get 503.")
    max_prompt_chars: int = _count(32_000, "Longest prompt accepted, in characters.")
    max_image_bytes: int = _count(8 * 1024 * 1024, "Largest image accepted on a message, in bytes (decoded).")
    max_images_bytes: int = _count(
        12 * 1024 * 1024, "Most image bytes accepted in one request, all images together."
    )
    embed_max_inputs: int = _count(256, "Most texts in one embeddings request, a count.")
    embed_max_bytes: int = _count(1_048_576, "Most bytes (UTF-8) of text in one embeddings request.")
    max_answer_chars: int = _count(200_000, "Longest answer streamed, in characters.")
    max_line_bytes: int = _count(1_048_576, "Longest line accepted from the upstream.", minimum=64)
    health_interval_s: float = _seconds(
        5.0, "Seconds between background probes of the model server(s); /healthz serves the last."
    )
    shutdown_timeout_s: float = _seconds(10.0, "Seconds a shutdown waits for streams to end.", minimum=0.0)
    log_format: str = _f("text", "Log line format.", choices=("text", "json"))
    secret_key: str = _f(
        "", "Key that signs login cookies, 32+ characters (default: generated once in the instance folder)."
    )
    cookie_secure: bool = _f(False, "Mark the login cookie Secure even when a request is not seen as HTTPS.")
    insecure_no_auth: bool = _f(
        False, "Serve remote clients with no account (jarvis serve --insecure-no-auth)."
    )
    instance_dir: str = _f(
        "",
        "Private folder for the database, keys and local token"
        " (default: $STATE_DIRECTORY, a source checkout's instance/, else ~/.local/state/jarvis).",
    )
    local_token: str = _f(
        "", "Token that signs in while no account exists, 32+ characters (default: generated once)."
    )
    allowed_hosts: str = _f(
        "", "Host names served besides loopback ones, comma-separated (* serves any: not recommended)."
    )
    trusted_proxies: str = _f(
        "", "Proxy addresses or networks whose X-Forwarded-For and -Proto are believed, comma-separated."
    )
    listen_unix: str = _f(
        "",
        "Path of a Unix socket that jarvis serve listens on instead of TCP (mode 0660): the reverse "
        "proxy's way in, which no other user of the machine can take; its peer's X-Forwarded-For and "
        "-Proto are believed.",
    )
    cookie_lifetime_s: float = _seconds(14 * 86400.0, "Seconds a sign-in cookie stays valid.", minimum=60.0)
    max_streams_per_user: int = _count(
        0,
        "Live streams one account may hold at once, counted in every process sharing JARVIS_REDIS_URL"
        " (0: up to JARVIS_MAX_STREAMS).",
        minimum=0,
    )
    max_readers_per_user: int = _count(
        8,
        "Readers one account may attach to its live answers at once (each holds a server thread;"
        " 0: up to the free stream slots).",
        minimum=0,
    )
    max_imports: int = _count(
        2, "Chat imports parsed at once in the process (one at a time per account); more get 503 import_busy."
    )
    login_address_limit: int = _count(
        30,
        "Sign-in attempts one client address may make a minute, whatever names it tries (each name "
        "also has 10); more get 429.",
    )
    login_hashes: int = _count(
        2, "Password checks run at once (each takes about 32 MB and a core for a moment)."
    )
    login_wait_s: float = _seconds(
        2.0, "Seconds a sign-in waits for a password check to free up before 503 sign_in_busy.", minimum=0.0
    )
    redis_url: str = _f(
        "",
        "Redis that coordinates several Jarvis processes, e.g. redis://127.0.0.1:6379/0 "
        "(needs the scale extra; unset: one process, no Redis).",
        secret=True,  # it may hold a password
    )
    lease_ttl_s: float = _seconds(
        10.0,
        "Seconds a session's lease outlives a process that died holding it (with JARVIS_REDIS_URL).",
        minimum=0.1,
    )
    redis_timeout_s: float = _seconds(
        0.5, "Seconds any one Redis call may take before it counts as unreachable."
    )
    liveness_ttl_s: float = _seconds(
        1.5,
        "Seconds a process that stopped heartbeating in Redis (killed, host lost) still counts as alive; "
        "then a prompt of a session whose answer it held goes ahead at once (with JARVIS_REDIS_URL).",
        minimum=0.1,
    )

    mcp_config: str = _f(
        "",
        "Path of a JSON file naming the MCP servers whose tools answers may use, in the shared "
        '{"mcpServers": {...}} format (unset: no tools).',
    )
    tool_timeout_s: float = _seconds(
        60.0, "Longest one tool call may run, in seconds; past it the call ends as an error."
    )
    tool_start_timeout_s: float = _seconds(
        10.0,
        "Seconds an MCP server has to start and list its tools; past it it is stopped and shown as failed.",
    )
    tool_cancel_timeout_s: float = _seconds(
        0.5,
        "Seconds a stdio MCP server has to answer a ping after a call of its was cancelled; past it it "
        "is stopped (terminate, then kill) and started again on next use.",
    )
    agent_max_steps: int = _count(
        8,
        "Most model calls one answer makes while it uses tools; past it the answer ends as length, "
        "saying so.",
    )
    tool_result_max_chars: int = _count(
        100_000, "Longest tool result handed to the model, in characters; longer ones are cut, saying so."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, overrides: Mapping | None = None) -> Config:
        """Defaults, then ``JARVIS_*`` variables, then ``overrides`` (by field name)."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            name = env_name(f.name)
            if name in environ and environ[name] != "":
                values[f.name] = _parse(f, environ[name], name)
        for key, value in (overrides or {}).items():
            if key not in cls.__dataclass_fields__:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError naming the first variable out of bounds or malformed."""
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        for name in ("secret_key", "local_token"):
            if 0 < len(getattr(self, name)) < MIN_SECRET_CHARS:
                raise ConfigError(f"{env_name(name)} must be at least {MIN_SECRET_CHARS} characters")
        self._check_addresses()
        if self.openai_api_key and self.openai_api_key_file:
            raise ConfigError("set JARVIS_OPENAI_API_KEY or JARVIS_OPENAI_API_KEY_FILE, not both")
        self.hosts()  # raises on a malformed JARVIS_UPSTREAMS

    def _check_addresses(self) -> None:
        for entry in split_list(self.trusted_proxies):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(f"JARVIS_TRUSTED_PROXIES: {entry!r} is not an address or network") from None
        for name in ("ollama_url", "openai_url"):
            url = getattr(self, name)
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{env_name(name)} must start with http:// or https://, not {url!r}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"JARVIS_REDIS_URL must start with redis://, rediss:// or unix://, not {self.redis_url!r}"
            )

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: the longest prompt (6 bytes a character at worst, escaped) and
        the most image bytes (4/3 of them as base64), with room for the rest of the JSON."""
        return self.max_prompt_chars * 6 + self.max_images_bytes * 4 // 3 + 65536

    def hosts(self) -> tuple[HostSpec, ...]:
        """The hosts named in JARVIS_UPSTREAMS, in order (empty: one upstream, the short form)."""
        specs = []
        for item in (part.strip() for part in self.upstreams.split(",")):
            if not item:
                continue
            kind, _, rest = item.partition("=")
            url, *params = rest.strip().split(";")
            spec = HostSpec(kind.strip(), url.strip().rstrip("/"))
            for param in params:
                key, _, value = param.partition("=")
                if key.strip() != "max" or not value.strip().isdigit():
                    spec = None
                    break
                spec = dataclasses.replace(spec, max_streams=int(value))
            if (
                spec is None
                or spec.kind not in HOST_KINDS
                or not spec.url.startswith(("http://", "https://"))
            ):
                raise ConfigError(
                    f"JARVIS_UPSTREAMS: {item!r} is not KIND=URL[;max=N] with KIND one of "
                    f"{', '.join(HOST_KINDS)} and an http:// or https:// URL"
                )
            if any(s.url == spec.url for s in specs):
                raise ConfigError(f"JARVIS_UPSTREAMS names {spec.url} twice")
            specs.append(spec)
        return tuple(specs)

    def instance_path(self) -> str:
        """The instance folder: set, or systemd's StateDirectory, or beside a source checkout."""
        if self.instance_dir:
            return os.path.abspath(self.instance_dir)
        if os.environ.get("STATE_DIRECTORY"):
            return os.environ["STATE_DIRECTORY"].split(":")[0]
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.exists(os.path.join(checkout, "setup.cfg")):  # a source checkout, not site-packages
            return os.path.join(checkout, "instance")
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        return os.path.join(state, "jarvis")

    def database_path(self) -> str:
        return self.database or os.path.join(self.instance_path(), "jarvis.sqlite3")


HOST_KINDS = ("ollama", "openai")


@dataclass(frozen=True)
class HostSpec:
    """One entry of JARVIS_UPSTREAMS."""

    kind: str
    url: str
    max_streams: int = 0  # concurrent answers on this host; 0: no limit


def split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def env_name(field_name: str) -> str:
    for suffix in ("_s",):
        if field_name.endswith(suffix):
            field_name = field_name[: -len(suffix)]
    return "JARVIS_" + field_name.upper()


def _parse(f: dataclasses.Field, raw: str, name: str):
    kind = (
        f.type if isinstance(f.type, type) else {"float": float, "int": int, "str": str, "bool": bool}[f.type]
    )
    if kind is bool:
        if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"{name} must be 1 or 0, not {raw!r}")
        return raw.lower() in ("1", "true", "yes", "on")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be a{'n' if kind is int else ''} {kind.__name__}, not {raw!r}"
        ) from None


def _check_field(f: dataclasses.Field, value) -> None:
    """A field's own bounds: its minimum and its choices."""
    lowest = f.metadata["min"]
    if lowest is not None and value < lowest:
        raise ConfigError(f"{env_name(f.name)} must be at least {lowest}, not {value}")
    if f.metadata["choices"] and value not in f.metadata["choices"]:
        raise ConfigError(
            f"{env_name(f.name)} must be one of {', '.join(f.metadata['choices'])}, not {value!r}"
        )


def describe() -> list[tuple[str, object, str]]:
    """(variable, default, meaning) for every setting: the README's table."""
    shown = {True: 1, False: 0}
    return [
        (
            env_name(f.name),
            shown.get(f.default, f.default) if isinstance(f.default, bool) else f.default,
            f.metadata["doc"],
        )
        for f in dataclasses.fields(Config)
    ]
