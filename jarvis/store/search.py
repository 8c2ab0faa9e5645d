"""Search: the owner's chats whose messages or title hold every word of a query.

Messages are searched by the engine (FTS5 in SQLite, ILIKE in PostgreSQL), and
only once their answer has ended; titles, short and few per owner, here.
"""

from __future__ import annotations

from .engines import Database, Engine, like

SEARCH_LIMIT = 50


class Search:
    def __init__(self, db: Database, engine: Engine):
        self.db = db
        self.engine = engine

    def search(self, query: str, owner: int | None = None) -> list[dict]:
        """The owner's sessions whose title or messages hold every word of ``query``, best first."""
        words = query.split()
        if not words:
            return []
        found: dict[str, dict] = {}
        with self.db.connect() as db:
            for r in self.engine.search(db, words, owner, SEARCH_LIMIT * 4):
                found.setdefault(r["id"], r)
            # every word as a substring, case-blind
            where = " AND ".join(["lower(title) LIKE ? ESCAPE '\\'"] * len(words))
            titled = db.execute(
                "SELECT id, title, created_at, updated_at, '' AS snippet FROM sessions"
                f" WHERE {db.same('owner')} AND {where} ORDER BY updated_at DESC LIMIT ?",
                (owner, *[like(w.lower()) for w in words], SEARCH_LIMIT),
            ).fetchall()
        for r in titled:
            found.setdefault(r["id"], dict(r))
        return list(found.values())[:SEARCH_LIMIT]
