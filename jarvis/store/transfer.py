"""A chat as a file: exported as Markdown or JSON, and read back from the JSON.

Pure functions over plain dicts say what a transcript looks like and what an
import may hold; ``Imports`` stores a checked import as a new chat. A whole
database is copied by dbcopy.py.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime, timezone

from ..conversation import Image, decode_image
from ..errors import BadRequest
from ..status import LIVE_STATUSES, Status
from . import chat_settings, images, rows
from .engines import Database
from .sessions import one_line

FORMAT = "jarvis.chat"
VERSION = 1
MAX_IMPORT_BYTES = 16 * 1024 * 1024
MAX_IMPORT_MESSAGES = 10_000
# JSON values an import may parse into: an export of MAX_IMPORT_MESSAGES messages holds about
# 40 each; a million values take at most about 40 MB in Python, whatever they are
MAX_IMPORT_VALUES = 1_000_000
ROLES = {"user", "assistant", "tool"}
ANSWER_STATUSES = {s.value for s in Status} | {"interrupted"}  # interrupted: marked by recovery
FIELDS = ("role", "content", "status", "model", "error", "meta", "created_at")


def to_json(session: dict, held: dict[int, dict[str, Image]] | None = None) -> dict:
    """The chat with every message's text, status, time and meta (thinking, tool calls, a tool's
    call id), and a prompt's images as data URLs (``held``: each prompt's, by digest): what an
    import reads back."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "title": session["title"],
        "created_at": session["created_at"],
        "settings": session.get("settings") or {},
        "messages": [_exported(m, (held or {}).get(m["id"], {})) for m in session["messages"]],
    }


def _exported(m: dict, linked: dict[str, Image]) -> dict:
    out = {k: m.get(k) for k in FIELDS}
    if out["meta"] and "images" in out["meta"]:  # named by digest here; the export carries the bytes
        out["meta"] = {k: v for k, v in out["meta"].items() if k != "images"} or None
        out["images"] = [image.data_url() for image in images.in_order(m["meta"], linked)]
    return out


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
        meta = m.get("meta") or {}
        who = {"user": "You", "assistant": "Jarvis"}.get(m["role"]) or f"Tool {meta.get('name', '')}".strip()
        when = _utc(m["created_at"])
        ended = "" if m["role"] != "assistant" or m["status"] == "completed" else f" ({m['status']})"
        out += [f"## {who} · {when}{ended}", "", *_extras(m["role"], meta), m["content"], ""]
    return "\n".join(out)


def _extras(role: str, meta: dict) -> list[str]:
    """What a transcript shows of a message beyond its text: images (by type: a file stands alone,
    without links to the server), thinking, tool calls."""
    out = []
    if role == "user":
        out += [f"[image: {n.get('mime')}]" for n in meta.get("images") or () if isinstance(n, dict)]
    if role == "assistant" and isinstance(meta.get("thinking"), str):
        took = meta.get("thinking_ms")
        head = f"Thought for {took / 1000:.1f} s:" if isinstance(took, (int, float)) else "Thought:"
        out += [head, "", *("> " + line for line in meta["thinking"].splitlines())]
    if role == "assistant" and isinstance(meta.get("tool_calls"), list):
        calls = [c for c in meta["tool_calls"] if isinstance(c, dict)]
        out += [f"Called `{c.get('name')}({c.get('arguments') or ''})`" for c in calls]
    return [*out, ""] if out else []


def filename(session: dict, ext: str) -> str:
    """A download name from the title: letters, digits and dashes, never empty."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", session["title"]).strip("-")[:60].rstrip("-") or "chat"
    return f"{stem}.{ext}"


def parse_import(
    body: object, max_chars: int, title_max: int, max_image_bytes: int = 8 * 1024 * 1024
) -> tuple[str, list[dict], dict]:
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
    settings = body.get("settings") or {}  # exports before settings existed have none
    if not isinstance(settings, dict):
        raise BadRequest('"settings" must be an object')
    settings = chat_settings.merge({}, settings)
    raw = body.get("messages")
    if not isinstance(raw, list) or len(raw) > MAX_IMPORT_MESSAGES:
        raise BadRequest(f'"messages" must be a list of at most {MAX_IMPORT_MESSAGES} messages')
    now = time.time()
    messages = [_message(i, m, max_chars, now, max_image_bytes) for i, m in enumerate(raw)]
    return one_line(title), messages, settings


def _message(i: int, m: object, max_chars: int, now: float, max_image_bytes: int) -> dict:
    """The ``i``-th message of an import, checked; a prompt's images decoded (data URLs only)."""
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise BadRequest(f'message {i}: "role" must be "user", "assistant" or "tool"')
    if not isinstance(m.get("content"), str) or len(m["content"]) > max_chars:
        raise BadRequest(f'message {i}: "content" must be a string of at most {max_chars} characters')
    status = _status(i, m)
    model, error, meta = m.get("model"), m.get("error"), m.get("meta")
    if model is not None and (not isinstance(model, str) or len(model) > 200):
        raise BadRequest(f'message {i}: "model" must be a string of at most 200 characters')
    if error is not None and not isinstance(error, dict):
        raise BadRequest(f'message {i}: "error" must be an object')
    if meta is not None and not isinstance(meta, dict):
        raise BadRequest(f'message {i}: "meta" must be an object')
    when = m.get("created_at")
    if not isinstance(when, (int, float)) or isinstance(when, bool) or not 0 <= when <= now + 86400:
        when = now
    found = m.get("images") or []
    if not isinstance(found, list) or (found and m["role"] != "user"):
        raise BadRequest(f'message {i}: "images" must be a list of data URLs, on a user\'s message')
    found = [
        decode_image(v, max_image_bytes, f"message {i} images[{j}]", bare=False) for j, v in enumerate(found)
    ]
    # the images are those the export carries: a meta naming others reaches nothing
    meta = {k: v for k, v in (meta or {}).items() if k != "images"}
    return {
        **{k: m.get(k) for k in FIELDS},
        "status": status,
        "model": None if model is None else one_line(model) or None,
        "created_at": float(when),
        "meta": {**meta, "images": images.named(found)} if found else meta or None,
        "images": found,
    }


def _status(i: int, m: dict) -> str:
    status = m.get("status")
    if m["role"] in rows.PROMPTS:
        return "sent"
    if status in LIVE_STATUSES:
        return "interrupted"
    if status not in ANSWER_STATUSES:
        raise BadRequest(f'message {i}: "status" {str(status)[:40]!r} is not an answer status')
    return status


class Imports:
    """Stores a checked import as a new chat of its owner."""

    def __init__(self, db: Database):
        self.db = db

    def add(
        self, title: str, messages: list[dict], owner: int | None = None, settings: dict | None = None
    ) -> dict:
        """Store a whole chat read from an export (its images once each), in one transaction;
        returns the new session."""
        now = time.time()
        sid = secrets.token_urlsafe(18)
        created = messages[0]["created_at"] if messages else now
        with self.db.connect() as db:
            db.begin()
            db.execute(
                "INSERT INTO sessions (id, owner, title, created_at, updated_at, settings)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (sid, owner, title, created, now, rows.dumped(settings)),
            )
            parent = None  # an import is one line of messages
            for m in messages:
                parent = db.insert(
                    "INSERT INTO messages (session_id, parent_id, role, content, status, model, error, meta,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        sid, parent, m["role"], m["content"], m["status"], m.get("model"),
                        rows.dumped(m.get("error")), rows.dumped(m.get("meta")), m["created_at"],
                        m["created_at"],
                    ),
                )  # fmt: skip
                images.add(db, parent, m.get("images") or (), now)
            db.execute("UPDATE sessions SET leaf_id = ? WHERE id = ?", (parent, sid))
            db.commit()
        return {"id": sid, "title": title, "created_at": now, "updated_at": now}


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
