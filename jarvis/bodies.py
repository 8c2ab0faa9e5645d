"""Reading a request's JSON body, for every route and dialect alike."""

from __future__ import annotations

from flask import request


def json_object(force: bool = False) -> dict | None:
    """The body if it is a JSON object; None for anything else, however hostile.

    ``force`` reads JSON whatever the content type says. JSON nested deeper than Python
    recurses raises RecursionError in the parser: a bad request, never a crash.
    """
    try:
        body = request.get_json(force=force, silent=True)
    except RecursionError:
        return None
    return body if isinstance(body, dict) else None
