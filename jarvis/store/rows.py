"""The rows every piece of the store reads back: a session, a message, and the small reads they share.

A session of another owner is reported exactly like an unknown one; an error
names a session by a bounded id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..conversation import Image, Message, ToolCall
from ..errors import NotFound
from . import images
from .engines import Connection

PROMPTS = ("user", "tool")  # who writes the message an answer answers: a person, or a tool's result


def shown(session_id: str) -> str:
    # an error echoes a bounded id: a client cannot make the answer or the log grow with it
    return repr(session_id if len(session_id) <= 40 else session_id[:40] + "…")


def session(row) -> dict:
    out = dict(row)
    out["settings"] = json.loads(out["settings"]) if out["settings"] else {}
    return out


def message(row) -> dict:
    out = dict(row)
    out["error"] = json.loads(out["error"]) if out["error"] else None
    out["meta"] = json.loads(out["meta"]) if out["meta"] else None
    return out


def conversation(row: Mapping, linked: Mapping[int, Mapping[str, Image]]) -> list[Message]:
    """The messages a stored row is, as a model is sent them: a prompt's images (those ``linked``
    to it), an answer's tool calls, the call a tool's result answers; never the thinking. An answer
    that ran tools itself is its steps again: each text and the calls it made, their results, and
    the text after."""
    meta = json.loads(row["meta"]) if row["meta"] else {}
    out: Message = {"role": row["role"], "content": row["content"]}
    if row["role"] == "user" and (found := images.in_order(meta, linked.get(row["id"], {}))):
        out["images"] = found
    elif row["role"] == "assistant" and isinstance(meta.get("tool_calls"), list):
        calls = [c for c in meta["tool_calls"] if isinstance(c, dict)]  # an import's meta is any object
        if calls and all(isinstance(c.get("result"), dict) for c in calls):
            return _steps(row["content"], calls)
        out["tool_calls"] = [_call(c) for c in calls]
    elif row["role"] == "tool":
        out.update({k: meta[k] for k in ("tool_call_id", "name") if isinstance(meta.get(k), str)})
    return [out]


def _call(c: Mapping) -> ToolCall:
    return ToolCall(str(c.get("id", "")), str(c.get("name", "")), str(c.get("arguments") or "{}"))


def _steps(content: str, calls: list[dict]) -> list[Message]:
    """An answer that ran tools, as the messages of its steps: the calls made at one point of the
    text (``at``, in characters) are one step, their results follow it."""
    out: list[Message] = []
    done, i = 0, 0
    while i < len(calls):
        at = _at(calls[i], done, len(content))
        group = [calls[i]]
        i += 1
        while i < len(calls) and _at(calls[i], at, len(content)) == at:
            group.append(calls[i])
            i += 1
        step: Message = {"role": "assistant", "content": content[done:at]}
        out.append(step | {"tool_calls": [_call(c) for c in group]})
        for c in group:
            result = str(c["result"].get("content", ""))
            out.append({"role": "tool", "content": result, "tool_call_id": str(c.get("id", "")),
                        "name": str(c.get("name", ""))})  # fmt: skip
        done = at
    out.append({"role": "assistant", "content": content[done:]})
    return out


def _at(call: Mapping, low: int, high: int) -> int:
    at = call.get("at")
    return min(max(at if isinstance(at, int) else low, low), high)


def require_owned(db: Connection, session_id: str, owner: int | None) -> None:
    """NotFound unless the session exists and is the owner's."""
    found = db.execute(f"SELECT 1 FROM sessions WHERE id = ? AND {db.same('owner')}", (session_id, owner))
    if found.fetchone() is None:
        raise NotFound(f"no session {shown(session_id)}")


def update_session(db: Connection, session_id: str, column: str, value: object, owner: int | None) -> dict:
    """Set one column of the session (``column`` is the store's, never a caller's) and return the
    session; NotFound if unknown or not the owner's."""
    changed = db.execute(
        f"UPDATE sessions SET {column} = ? WHERE id = ? AND {db.same('owner')}", (value, session_id, owner)
    )
    if changed.rowcount == 0:
        raise NotFound(f"no session {shown(session_id)}")
    row = db.execute(
        "SELECT id, title, created_at, updated_at, settings FROM sessions WHERE id = ?", (session_id,)
    ).fetchone()
    return session(row)


def tree_rows(db: Connection, session_id: str, content: bool = False) -> list[dict]:
    """The session's messages as the tree needs them (``content`` and ``meta`` too, if asked)."""
    columns = "id, parent_id, role, status" + (", content, meta" if content else "")
    rows = db.execute(f"SELECT {columns} FROM messages WHERE session_id = ?", (session_id,))
    return [dict(r) for r in rows]


def leaf(db: Connection, session_id: str) -> int | None:
    """The last message of the versions shown."""
    row = db.execute("SELECT leaf_id FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return row["leaf_id"] if row else None


def with_unwritten(found: Sequence[Mapping], unwritten: Mapping[int, Any]) -> list[Mapping]:
    """Message rows with the answers' final writes this process has not landed yet in their place
    (``AnswerWriter.unwritten``, taken before the rows were read): a client that saw an answer end
    reads it ended, and the next prompt's context carries it, even while the database is slow to
    take the write."""
    out: list[Mapping] = []
    for row in found:
        w = unwritten.get(row["id"])
        if w is not None:
            row = {**row, "content": w.content, "status": w.status, "error": dumped(w.error)}
            if w.meta is not None:  # as save_answer: no meta leaves the stored one
                row["meta"] = dumped(w.meta)
        out.append(row)
    return out


def dumped(value: dict | None) -> str | None:
    """A JSON column's text: None for nothing (or an empty object)."""
    return json.dumps(value) if value else None
