"""Server-Sent Events framing, as one pure function.

Every payload is JSON on a single ``data:`` line: ``json.dumps`` escapes the
newlines a token may hold, so no model output can break a frame.
"""

from __future__ import annotations

import json

HEARTBEAT = b": hb\n\n"


def event(name: str, data: dict, id: int | None = None) -> bytes:
    """Frame one SSE event."""
    head = f"id: {id}\nevent: {name}\n" if id is not None else f"event: {name}\n"
    return (head + "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n").encode()
