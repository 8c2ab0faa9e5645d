"""Images on prompts: each stored once, by content hash, and lent to the owner of a prompt holding it.

A prompt's meta names its images (``{"images": [{"digest", "mime"}]}``, in the
order sent); ``message_images`` links the prompt to each, and only that link
reaches an image's bytes: a meta that names an image (an import, say) reaches
nothing. An image no prompt holds any more goes with the last chat that held it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..conversation import Image
from ..errors import NotFound
from .engines import Connection, Database

DIGEST = re.compile(r"[0-9a-f]{64}")  # SHA-256 in hex, as Image.digest writes it


def named(images: Iterable[Image]) -> list[dict]:
    """The images as a prompt's meta names them."""
    return [{"digest": image.digest, "mime": image.mime} for image in images]


def add(db: Connection, message_id: int, images: Iterable[Image], now: float) -> None:
    """Store each image unless it is stored already, and link it to the prompt ``message_id``."""
    for image in images:
        db.execute(
            "INSERT INTO images (digest, mime, data, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (digest) DO NOTHING",
            (image.digest, image.mime, image.data, now),
        )
        db.execute(
            "INSERT INTO message_images (message_id, digest) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (message_id, image.digest),
        )


def forget_unheld(db: Connection) -> int:
    """Delete the images no prompt holds (their chats were deleted); returns how many."""
    return db.execute(
        "DELETE FROM images WHERE NOT EXISTS (SELECT 1 FROM message_images l WHERE l.digest = images.digest)"
    ).rowcount


def held(db: Connection, message_ids: list[int]) -> dict[int, dict[str, Image]]:
    """The images linked to each of the prompts ``message_ids``, by digest."""
    out: dict[int, dict[str, Image]] = {}
    for start in range(0, len(message_ids), 500):  # well under either engine's parameter limit
        some = message_ids[start : start + 500]
        found = db.execute(
            "SELECT l.message_id, i.digest, i.mime, i.data FROM message_images l"
            f" JOIN images i ON i.digest = l.digest WHERE l.message_id IN ({', '.join('?' * len(some))})",
            some,
        )
        for r in found:
            out.setdefault(r["message_id"], {})[r["digest"]] = Image(r["mime"], bytes(r["data"]))
    return out


def in_order(meta: Mapping | None, linked: Mapping[str, Image]) -> list[Image]:
    """The images a prompt's meta names, in its order, of those linked to it."""
    names = (meta or {}).get("images") or []
    return [linked[n["digest"]] for n in names if isinstance(n, dict) and n.get("digest") in linked]


class Images:
    """An image's bytes, for its owner; a session's images, for its export."""

    def __init__(self, db: Database):
        self.db = db

    def get(self, digest: str, owner: int | None = None) -> Image:
        """The image, if a prompt of ``owner``'s holds it; NotFound otherwise, as for an unknown one."""
        if DIGEST.fullmatch(digest):
            with self.db.connect() as db:
                row = db.execute(
                    "SELECT i.mime, i.data FROM images i WHERE i.digest = ? AND EXISTS (SELECT 1"
                    " FROM message_images l JOIN messages m ON m.id = l.message_id"
                    " JOIN sessions s ON s.id = m.session_id"
                    f" WHERE l.digest = i.digest AND {db.same('s.owner')})",
                    (digest, owner),
                ).fetchone()
            if row is not None:
                return Image(row["mime"], bytes(row["data"]))
        raise NotFound("no such image")

    def of_session(self, session_id: str) -> dict[int, dict[str, Image]]:
        """The images of each prompt of the session (whose owner the caller has checked), by digest."""
        with self.db.connect() as db:
            ids = db.execute(
                "SELECT DISTINCT l.message_id FROM message_images l JOIN messages m ON m.id = l.message_id"
                " WHERE m.session_id = ?",
                (session_id,),
            )
            return held(db, [r["message_id"] for r in ids])
