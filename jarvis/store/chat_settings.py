"""A chat's own settings: its system prompt, temperature, answer length and the tools it offers.

Pure functions over plain dicts: what a client may set (checked here, once, for
the route and for an import alike) and how the settings shape a prompt — the
system prompt first in the conversation, the rest as sampling ``Options``;
``ChatSettings`` reads and writes them.
"""

from __future__ import annotations

from ..errors import BadRequest, NotFound
from ..upstream import Options
from . import rows
from .engines import Database

SYSTEM_MAX_CHARS = 8000
TEMPERATURE_MAX = 2.0  # what Ollama and OpenAI accept
MAX_TOKENS_MAX = 32768
FIELDS = ("system", "temperature", "max_tokens", "tools")
MAX_TOOL_NAMES = 256


def merge(current: dict, change: object) -> dict:
    """``current`` with ``change`` applied: a field set to null is cleared, a null change clears all."""
    if change is None:
        return {}
    if not isinstance(change, dict):
        raise BadRequest('"settings" must be an object or null')
    unknown = sorted(set(change) - set(FIELDS))
    if unknown:
        raise BadRequest(f'"settings" has no field {unknown[0][:40]!r}; it has {", ".join(FIELDS)}')
    merged = {**current, **change}
    return check({k: v for k, v in merged.items() if v is not None})


def check(settings: dict) -> dict:
    """The settings if every field has its type and range; BadRequest names the first that does not."""
    system = settings.get("system")
    if system is not None and (not isinstance(system, str) or len(system) > SYSTEM_MAX_CHARS):
        raise BadRequest(f'"system" must be a string of at most {SYSTEM_MAX_CHARS} characters')
    temperature = settings.get("temperature")
    if temperature is not None and (not _number(temperature) or not 0 <= temperature <= TEMPERATURE_MAX):
        raise BadRequest(f'"temperature" must be a number from 0 to {TEMPERATURE_MAX:g}')
    max_tokens = settings.get("max_tokens")
    if max_tokens is not None and (
        type(max_tokens) is not int or not 1 <= max_tokens <= MAX_TOKENS_MAX  # not a bool, nor 2.0
    ):
        raise BadRequest(f'"max_tokens" must be a whole number from 1 to {MAX_TOKENS_MAX}')
    tools = settings.get("tools")
    if (
        tools is not None
        and tools is not False
        and not (
            isinstance(tools, list)
            and len(tools) <= MAX_TOOL_NAMES
            and all(isinstance(t, str) and 0 < len(t) <= 200 for t in tools)
        )
    ):
        raise BadRequest('"tools" must be false (none) or a list of tool names (null: every configured tool)')
    out = {k: settings[k] for k in FIELDS if settings.get(k) is not None}
    if not (out.get("system") or "").strip():
        out.pop("system", None)  # a blank system prompt says nothing
    return out


def conversation(settings: dict, messages: list[dict]) -> list[dict]:
    """The messages to send upstream: the chat's system prompt first, when it has one."""
    system = settings.get("system")
    return [{"role": "system", "content": system}, *messages] if system else messages


def offered_tools(settings: dict) -> frozenset[str] | None | bool:
    """The tools a chat offers its model: False for none, their names, or None for every one."""
    tools = settings.get("tools")
    if tools is False:
        return False
    return None if tools is None else frozenset(tools)


def options(settings: dict) -> Options:
    """Sampling options from the settings (None in a field: the backend's default)."""
    return Options(temperature=settings.get("temperature"), max_tokens=settings.get("max_tokens"))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


class ChatSettings:
    """A chat's settings as stored: one JSON column of its session."""

    def __init__(self, db: Database):
        self.db = db

    def get(self, session_id: str, owner: int | None = None) -> dict:
        """The session's settings ({} when it has none); NotFound if unknown or not the owner's."""
        with self.db.connect() as db:
            row = db.execute(
                f"SELECT settings FROM sessions WHERE id = ? AND {db.same('owner')}", (session_id, owner)
            ).fetchone()
        if row is None:
            raise NotFound(f"no session {rows.shown(session_id)}")
        return rows.session(row)["settings"]

    def set(self, session_id: str, settings: dict, owner: int | None = None) -> dict:
        """Replace the session's settings (already checked) and return the session; NotFound if
        unknown or not the owner's."""
        with self.db.connect() as db:
            return rows.update_session(db, session_id, "settings", rows.dumped(settings), owner)
