"""Sessions and their messages: a chat's row, the prompts and answers it holds, how answers end.

Every session call takes ``owner``: a user id, or None when no account exists.
A session of another owner is reported exactly like an unknown one. A message
follows a parent (tree.py draws the versions); an answer is stored empty and
streaming with its prompt, and written again as it grows and once it ends.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable

from ..conversation import Message
from ..errors import NotFound
from . import images, rows, tree
from .engines import Connection, Database
from .tree import LEAF

TITLE_CHARS = 60
TITLE_MAX_CHARS = 200  # a title someone typed
# a chat nobody wrote in is left out of the list after this long: "New chat" clicks do not pile up
EMPTY_CHAT_S = 300.0
STREAMING = "streaming"  # an answer being written; a crash leaves it so, recovery marks it interrupted
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode's control characters: CR, LF, ESC, DEL, C1


class Sessions:
    """Chats: created, listed, renamed, read whole, deleted."""

    def __init__(self, db: Database):
        self.db = db

    def create(self, owner: int | None = None, title: str = "") -> dict:
        now = time.time()
        sid = secrets.token_urlsafe(18)  # 144 random bits
        with self.db.connect() as db:
            db.execute(
                "INSERT INTO sessions (id, owner, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (sid, owner, title, now, now),
            )
        return {"id": sid, "title": title, "created_at": now, "updated_at": now}

    def list(self, owner: int | None = None, now: float | None = None) -> list[dict]:
        """The owner's sessions, newest first, without those left empty for EMPTY_CHAT_S."""
        cutoff = (time.time() if now is None else now) - EMPTY_CHAT_S
        with self.db.connect() as db:
            found = db.execute(
                f"SELECT id, title, created_at, updated_at FROM sessions s WHERE {db.same('owner')}"
                " AND (created_at > ? OR EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id))"
                " ORDER BY updated_at DESC, created_at DESC",
                (owner, cutoff),
            ).fetchall()
        return [dict(r) for r in found]

    def rename(self, session_id: str, title: str, owner: int | None = None) -> dict:
        """Give the session a title of the caller's; NotFound if unknown or not the owner's."""
        with self.db.connect() as db:
            return rows.update_session(db, session_id, "title", title, owner)

    def get(self, session_id: str, owner: int | None = None) -> dict:
        """The session with the messages of the versions shown, oldest first; NotFound if unknown
        or not the owner's."""
        unwritten = self.db.writer.unwritten()  # before the read: what lands meanwhile is in both
        with self.db.connect() as db:
            row = db.execute(
                "SELECT id, title, created_at, updated_at, leaf_id, settings FROM sessions"
                f" WHERE id = ? AND {db.same('owner')}",
                (session_id, owner),
            ).fetchone()
            if row is None:
                raise NotFound(f"no session {rows.shown(session_id)}")
            found = db.execute("SELECT * FROM messages WHERE session_id = ?", (session_id,)).fetchall()
        found = rows.with_unwritten(found, unwritten)
        messages = tree.with_versions([rows.message(r) for r in found], row["leaf_id"])
        return {**rows.session(row), "messages": messages}

    def require(self, session_id: str, owner: int | None = None) -> None:
        with self.db.connect() as db:
            rows.require_owned(db, session_id, owner)

    def delete(self, session_id: str, owner: int | None = None) -> None:
        """Delete the session, its messages, and the images no other chat holds."""
        with self.db.connect() as db:
            db.begin()  # the write lock: a prompt cannot link an image while it is found unheld
            deleted = db.execute(
                f"DELETE FROM sessions WHERE id = ? AND {db.same('owner')}", (session_id, owner)
            )
            if deleted.rowcount == 0:
                raise NotFound(f"no session {rows.shown(session_id)}")
            images.forget_unheld(db)
            db.commit()


class Messages:
    """Prompts and answers: stored with their parent, answers written as they grow and end."""

    def __init__(self, db: Database):
        self.db = db

    def add_exchange(
        self,
        session_id: str,
        prompt: Message | str,
        trace_id: str,
        model: str,
        parent_id: int | None | str = LEAF,
    ) -> tuple[int, int]:
        """Store the prompt and an empty streaming answer in one transaction, and show them.

        The prompt is a user's message (a string: its text), its images stored once each, or a
        tool's result (``tool_call_id``, ``name``): what it holds beyond its text goes in its meta.
        It follows ``parent_id``: an answer of the session, None for a first prompt, or LEAF (the
        versions shown). A prompt under an earlier answer is an edit: a new version."""
        if isinstance(prompt, str):
            prompt = {"role": "user", "content": prompt}
        role, text, meta = prompt_row(prompt)
        now = time.time()
        with self.db.connect() as db:
            db.begin()
            if parent_id == LEAF:
                parent_id = rows.leaf(db, session_id)
            elif parent_id is not None:
                _require_message(db, session_id, parent_id, ("assistant",))
            user = _insert(db, session_id, parent_id, role, "sent", trace_id, model, now, text, meta)
            images.add(db, user, prompt.get("images") or (), now)
            answer = _insert(db, session_id, user, "assistant", STREAMING, trace_id, model, now)
            db.execute(
                "UPDATE sessions SET updated_at = ?, leaf_id = ?,"
                " title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
                (now, answer, title(text) if role == "user" else "", session_id),
            )
            db.commit()
        return user, answer

    def add_answer(self, session_id: str, prompt_id: int, trace_id: str, model: str) -> int:
        """Store an empty streaming answer to the stored prompt ``prompt_id``, beside the answers it
        has (a regenerated version), and show it."""
        now = time.time()
        with self.db.connect() as db:
            db.begin()
            _require_message(db, session_id, prompt_id, rows.PROMPTS)
            answer = _insert(db, session_id, prompt_id, "assistant", STREAMING, trace_id, model, now)
            db.execute(
                "UPDATE sessions SET updated_at = ?, leaf_id = ? WHERE id = ?", (now, answer, session_id)
            )
            db.commit()
        return answer

    def prompt_of(self, session_id: str, answer_id: int) -> int:
        """The prompt that the answer ``answer_id`` of the session answers; NotFound for anything else."""
        with self.db.connect() as db:
            return _require_message(db, session_id, answer_id, ("assistant",))

    def save_answer(
        self, message_id: int, content: str, status: str, error: dict | None = None, meta: dict | None = None
    ) -> None:
        """Write the answer's text so far and its status, once, here; an answer being streamed is
        written through the store's ``writer`` instead, which retries and never holds it."""
        with self.db.connect() as db:
            db.execute(
                "UPDATE messages SET content = ?, status = ?, error = ?, meta = COALESCE(?, meta),"
                " updated_at = ? WHERE id = ?",
                (content, status, rows.dumped(error), rows.dumped(meta), time.time(), message_id),
            )

    def recover(self, sessions: Iterable[str] | None = None) -> int:
        """Mark answers left streaming by a crash as interrupted (only those of ``sessions``, if given:
        the others may be live in another process); returns how many."""
        mark = "UPDATE messages SET status = 'interrupted', updated_at = ? WHERE status = ?"
        now = time.time()
        with self.db.connect() as db:
            if sessions is None:
                return db.execute(mark, (now, STREAMING)).rowcount
            mark += " AND session_id = ?"
            return sum(db.execute(mark, (now, STREAMING, sid)).rowcount for sid in sessions)

    def streaming_sessions(self) -> set[str]:
        """The sessions that have an answer marked streaming."""
        with self.db.connect() as db:
            found = db.execute("SELECT DISTINCT session_id FROM messages WHERE status = ?", (STREAMING,))
            return {r["session_id"] for r in found}

    def interrupt(self, trace_id: str) -> int:
        """Mark the answer ``trace_id`` interrupted if it is still streaming (its process died);
        returns how many. A live process's final save overwrites it."""
        with self.db.connect() as db:
            return db.execute(
                "UPDATE messages SET status = 'interrupted', updated_at = ?"
                " WHERE trace_id = ? AND role = 'assistant' AND status = ?",
                (time.time(), trace_id, STREAMING),
            ).rowcount


def _require_message(db: Connection, session_id: str, message_id: int, roles: tuple[str, ...]) -> int | None:
    """The parent of the session's message ``message_id``, which must be written by one of ``roles``."""
    row = db.execute(
        "SELECT parent_id FROM messages WHERE id = ? AND session_id = ?"
        f" AND role IN ({', '.join('?' * len(roles))})",
        (message_id, session_id, *roles),
    ).fetchone()
    if row is None:
        who = "answer" if roles == ("assistant",) else "prompt"
        raise NotFound(f"no {who} {message_id} in this session")
    return row["parent_id"]


def prompt_row(prompt: Message) -> tuple[str, str, str | None]:
    """A prompt's role, text and meta as its row holds them: a user's images named (their bytes
    are stored apart), a tool's result with the call it answers."""
    role = prompt.get("role", "user")
    if role not in rows.PROMPTS:
        raise ValueError(f"a prompt is written by a user or a tool, not {role!r}")
    if role == "user":
        meta = {"images": images.named(prompt["images"])} if prompt.get("images") else {}
    else:
        meta = {k: prompt[k] for k in ("tool_call_id", "name") if prompt.get(k)}
    return role, prompt.get("content") or "", rows.dumped(meta)


def _insert(
    db: Connection, session_id, parent_id, role, status, trace_id, model, now, content="", meta=None
) -> int:
    return db.insert(
        "INSERT INTO messages (session_id, parent_id, role, content, status, trace_id, model, meta,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, parent_id, role, content, status, trace_id, model, meta, now, now),
    )


def title(prompt: str) -> str:
    """A session's title: the prompt's first line, cut to TITLE_CHARS with an ellipsis."""
    line = prompt.strip().splitlines()[0] if prompt.strip() else ""
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def one_line(text: str) -> str:
    """``text`` as one line for a title or a name: each control character (CR, LF, ESC…) a space,
    runs of spaces one, none at either end."""
    return " ".join(_CONTROL.sub(" ", text).split())
