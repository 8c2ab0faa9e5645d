"""A chat as a tree of messages: every message follows a parent, and siblings are versions.

Regenerating an answer or editing a prompt adds a sibling instead of overwriting
anything; the session's leaf names the version shown. Pure functions over the
rows of one session (dicts with ``id`` and ``parent_id``): ``Versions`` reads
the rows once and builds the path here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import NotFound
from . import images
from . import rows as stored
from .engines import Database

LEAF = "leaf"  # a new prompt's parent, or the end of a context: the versions shown
ANSWERED = ("completed", "length")  # the answers a context carries on


class Versions:
    """Which version of a chat is shown, and the conversation on the path to one."""

    def __init__(self, db: Database):
        self.db = db

    def show(self, session_id: str, message_id: int, owner: int | None = None) -> None:
        """Show the versions through ``message_id``: the leaf becomes the newest one under it.
        NotFound for a message of another session."""
        with self.db.connect() as db:
            db.begin()
            stored.require_owned(db, session_id, owner)
            rows = stored.tree_rows(db, session_id)
            if not any(r["id"] == message_id for r in rows):
                raise NotFound(f"no message {message_id} in this session")
            db.execute(
                "UPDATE sessions SET leaf_id = ? WHERE id = ?", (newest_leaf(rows, message_id), session_id)
            )
            db.commit()

    def context(self, session_id: str, upto: int | None | str = LEAF) -> list[dict]:
        """The conversation to send upstream: the prompts (with their images, or a tool's result)
        and completed answers (with their tool calls) on the path to ``upto`` (a message of the
        session, None for nothing, LEAF for the versions shown)."""
        if upto is None:
            return []
        unwritten = self.db.writer.unwritten()  # before the read, as Sessions.get
        with self.db.connect() as db:
            rows = stored.with_unwritten(stored.tree_rows(db, session_id, content=True), unwritten)
            if upto == LEAF:
                upto = stored.leaf(db, session_id)
            elif not any(r["id"] == upto for r in rows):
                raise NotFound(f"no message {upto} in this session")
            carried = [r for r in path(rows, upto) if r["role"] in stored.PROMPTS or r["status"] in ANSWERED]
            with_images = [
                r["id"] for r in carried if r["role"] == "user" and '"images"' in (r["meta"] or "")
            ]
            linked = images.held(db, with_images) if with_images else {}
        return [m for r in carried for m in stored.conversation(r, linked)]


def children(rows: Sequence[Mapping]) -> dict[int | None, list[int]]:
    """Each message's children (None: the roots), oldest first."""
    out: dict[int | None, list[int]] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        out.setdefault(r["parent_id"], []).append(r["id"])
    return out


def path(rows: Sequence[Mapping], leaf: int | None) -> list[Mapping]:
    """The messages from the first prompt down to ``leaf``: the conversation as it is shown."""
    by_id = {r["id"]: r for r in rows}
    out: list[Mapping] = []
    node = by_id.get(leaf)
    while node is not None and len(out) < len(by_id):  # bounded: a damaged parent link cannot loop
        out.append(node)
        node = by_id.get(node["parent_id"])
    out.reverse()
    return out


def newest_leaf(rows: Sequence[Mapping], start: int) -> int:
    """The newest message under ``start`` (or ``start`` itself): where that branch was last written.

    A child is always newer than its parent, so the newest message of a subtree is a leaf."""
    kids = children(rows)
    newest, todo, seen = start, [start], set()
    while todo:
        node = todo.pop()
        if node in seen:  # a damaged parent link cannot loop
            continue
        seen.add(node)
        newest = max(newest, node)
        todo.extend(kids.get(node, ()))
    return newest


def with_versions(rows: Sequence[Mapping], leaf: int | None) -> list[dict]:
    """The path to ``leaf``, each message with ``versions`` (its place among its siblings) when it has any."""
    kids = children(rows)
    out = []
    for message in path(rows, leaf):
        message = dict(message)
        ids = kids[message["parent_id"]]
        if len(ids) > 1:
            message["versions"] = {"index": ids.index(message["id"]), "count": len(ids), "ids": ids}
        out.append(message)
    return out
