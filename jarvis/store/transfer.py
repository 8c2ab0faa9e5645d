"""A chat as a file: exported as Markdown or JSON, and read back from the JSON.

Pure functions over plain dicts: the routes read and write the store, this module
only says what a transcript looks like and what an import may hold.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from ..errors import BadRequest
from ..status import Status
from ..web.bodies import one_line
from . import chat_settings

FORMAT = "jarvis.chat"
VERSION = 1
MAX_IMPORT_BYTES = 16 * 1024 * 1024
MAX_IMPORT_MESSAGES = 10_000
# JSON values an import may parse into: an export of MAX_IMPORT_MESSAGES messages holds about
# 40 each; a million values take at most about 40 MB in Python, whatever they are
MAX_IMPORT_VALUES = 1_000_000
ROLES = {"user", "assistant"}
ANSWER_STATUSES = {s.value for s in Status} | {"interrupted"}  # interrupted: marked by recovery
LIVE = {"pending", "queued", "streaming"}
FIELDS = ("role", "content", "status", "model", "error", "meta", "created_at")


def to_json(session: dict) -> dict:
    """The chat with every message's text, status and time: what an import reads back."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "title": session["title"],
        "created_at": session["created_at"],
        "settings": session.get("settings") or {},
        "messages": [{k: m.get(k) for k in FIELDS} for m in session["messages"]],
    }


def to_markdown(session: dict) -> str:
    """The chat for people to read: a heading per message with who wrote it, when, and how it ended."""
    out = [f"# {session['title'] or 'New chat'}", ""]
    settings = session.get("settings") or {}
    if settings.get("system"):
        out += ["System prompt:", "", *("> " + line for line in settings["system"].splitlines()), ""]
    shown = [f"{k} {settings[k]}" for k in ("temperature", "max_tokens") if k in settings]
    if shown:
        out += ["Settings: " + ", ".join(shown), ""]
    for m in session["messages"]:
        who = "You" if m["role"] == "user" else "Jarvis"
        when = _utc(m["created_at"])
        ended = "" if m["role"] == "user" or m["status"] == "completed" else f" ({m['status']})"
        out += [f"## {who} · {when}{ended}", "", m["content"], ""]
    return "\n".join(out)


def filename(session: dict, ext: str) -> str:
    """A download name from the title: letters, digits and dashes, never empty."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", session["title"]).strip("-")[:60].rstrip("-") or "chat"
    return f"{stem}.{ext}"


def parse_import(body: object, max_chars: int, title_max: int) -> tuple[str, list[dict], dict]:
    """Check an uploaded export and return its title, messages and settings; BadRequest names the first flaw.

    A status that was live when exported (the answer was still being written) comes back
    as ``interrupted``: nothing is writing it here. The title and model names come back as one
    line without control characters (a title is shown in a list, names in logs).
    """
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BadRequest(f'an import is a JSON object with "format": "{FORMAT}", as the export writes')
    title = body.get("title", "")
    if not isinstance(title, str) or len(title) > title_max:
        raise BadRequest(f'"title" must be a string of at most {title_max} characters')
    title = one_line(title)
    settings = body.get("settings") or {}  # exports before settings existed have none
    if not isinstance(settings, dict):
        raise BadRequest('"settings" must be an object')
    settings = chat_settings.merge({}, settings)
    raw = body.get("messages")
    if not isinstance(raw, list) or len(raw) > MAX_IMPORT_MESSAGES:
        raise BadRequest(f'"messages" must be a list of at most {MAX_IMPORT_MESSAGES} messages')
    now = time.time()
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f'message {i}: "role" must be "user" or "assistant"')
        if not isinstance(m.get("content"), str) or len(m["content"]) > max_chars:
            raise BadRequest(f'message {i}: "content" must be a string of at most {max_chars} characters')
        status = m.get("status")
        if m["role"] == "user":
            status = "sent"
        elif status in LIVE:
            status = "interrupted"
        elif status not in ANSWER_STATUSES:
            raise BadRequest(f'message {i}: "status" {str(status)[:40]!r} is not an answer status')
        model, error, meta = m.get("model"), m.get("error"), m.get("meta")
        if model is not None and (not isinstance(model, str) or len(model) > 200):
            raise BadRequest(f'message {i}: "model" must be a string of at most 200 characters')
        if model is not None:
            model = one_line(model) or None
        if error is not None and not isinstance(error, dict):
            raise BadRequest(f'message {i}: "error" must be an object')
        if meta is not None and not isinstance(meta, dict):
            raise BadRequest(f'message {i}: "meta" must be an object')
        when = m.get("created_at")
        if not isinstance(when, (int, float)) or isinstance(when, bool) or not 0 <= when <= now + 86400:
            when = now
        messages.append(
            {**{k: m.get(k) for k in FIELDS}, "status": status, "model": model, "created_at": float(when)}
        )
    return title, messages, settings


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
