"""One frozen configuration object, read once from ``JARVIS_*`` variables.

Each field's environment variable is ``JARVIS_`` plus its name in capitals,
without the unit suffix: ``supersede_timeout_s`` is ``JARVIS_SUPERSEDE_TIMEOUT``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _f(default, doc: str, *, minimum: float | None = None, choices: tuple = ()):
    return field(default=default, metadata={"doc": doc, "min": minimum, "choices": choices})


@dataclass(frozen=True)
class Config:
    ollama_url: str = _f("http://127.0.0.1:11434", "Base URL of the Ollama server.")
    model: str = _f("llama3.2", "Model used when a prompt names none (Ollama backend).")
    backend: str = _f(
        "auto",
        "auto: Ollama if it answers at start-up, else the embedded model if installed.",
        choices=("auto", "ollama", "local"),
    )
    local_model: str = _f("", "Path of a GGUF file for the local backend (default: SmolLM2-135M).")
    local_max_tokens: int = _f(
        0, "Longest answer of the local model, in tokens (0: up to its window).", minimum=0
    )
    database: str = _f("", "SQLite file for sessions and messages (default: instance/jarvis.sqlite3).")
    connect_timeout_s: float = _f(3.0, "Seconds to open a connection to Ollama.", minimum=0.01)
    first_token_timeout_s: float = _f(
        300.0, "Seconds to wait for the first token (models take time to load).", minimum=0.01
    )
    idle_timeout_s: float = _f(60.0, "Seconds of upstream silence allowed between tokens.", minimum=0.01)
    total_timeout_s: float = _f(900.0, "Longest an answer may stream, in seconds.", minimum=0.01)
    supersede_timeout_s: float = _f(
        2.0, "Seconds a new prompt waits for the session's previous stream to end.", minimum=0.0
    )
    cancel_timeout_s: float = _f(
        0.5, "Seconds cleanup waits for a cancelled worker before detaching it.", minimum=0.0
    )
    heartbeat_s: float = _f(
        1.0,
        "Seconds between SSE heartbeats; a host without lookahead sees a gone client within one of them.",
        minimum=0.01,
    )
    disconnect_poll_s: float = _f(
        0.02, "Seconds between checks for gone clients (waitress with request lookahead).", minimum=0.001
    )
    flush_interval_s: float = _f(1.0, "Seconds between saves of a streaming answer.", minimum=0.01)
    max_streams: int = _f(16, "Live streams allowed in the process; more get 503.", minimum=1)
    max_prompt_chars: int = _f(32_000, "Longest prompt accepted, in characters.", minimum=1)
    max_answer_chars: int = _f(200_000, "Longest answer streamed, in characters.", minimum=1)
    max_line_bytes: int = _f(1_048_576, "Longest line accepted from the upstream.", minimum=64)
    shutdown_timeout_s: float = _f(10.0, "Seconds a shutdown waits for streams to end.", minimum=0.0)
    log_format: str = _f("text", "Log line format.", choices=("text", "json"))
    secret_key: str = _f("", "Key that signs login cookies (default: generated once in the instance folder).")
    cookie_secure: bool = _f(False, "Mark the login cookie Secure even when a request is not seen as HTTPS.")
    insecure_no_auth: bool = _f(
        False, "Serve remote clients with no account (jarvis serve --insecure-no-auth)."
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
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            lowest = f.metadata["min"]
            if lowest is not None and value < lowest:
                raise ConfigError(f"{env_name(f.name)} must be at least {lowest}, not {value}")
            if f.metadata["choices"] and value not in f.metadata["choices"]:
                raise ConfigError(
                    f"{env_name(f.name)} must be one of {', '.join(f.metadata['choices'])}, not {value!r}"
                )
        if not self.ollama_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"JARVIS_OLLAMA_URL must start with http:// or https://, not {self.ollama_url!r}"
            )


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
