"""A chat as a tree of messages: every message follows a parent, and siblings are versions.

Regenerating an answer or editing a prompt adds a sibling instead of overwriting
anything; the session's leaf names the version shown. Pure functions over the
rows of one session (dicts with ``id`` and ``parent_id``): the store reads the
rows once and builds the path here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


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
