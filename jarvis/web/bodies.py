"""Reading a request's input, for every route and dialect alike.

Text is checked once, here, for what no store holds (a NUL byte: PostgreSQL refuses it, SQLite's
search chokes on it), so every route answers 400 instead of failing in the database: JSON bodies in
``json_object``, the path, the query and a form in ``check_request``. A body may also be bounded in
how many values it parses into (an import), counted before it is parsed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from flask import request

from ..conversation import Image, decode_image
from ..errors import BadRequest, PromptTooLarge, UnsupportedMediaType
from ..store.sessions import one_line  # noqa: F401  (a title as one line: the store's rule, the routes' too)

# the largest body any route reads (an import, 16 MiB) and room over it: the route's own limit
# answers, in Jarvis's JSON; ``jarvis serve`` has waitress refuse bigger bodies from their length
MAX_BODY_BYTES = 17 * 1024 * 1024
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
SLICE_BYTES = 64 * 1024  # what the value count reads at a time, once it looks past the strings


def json_object(force: bool = False, max_values: int | None = None) -> dict | None:
    """The body if it is a JSON object; None for anything else, however hostile.

    ``force`` reads JSON whatever the content type says. JSON nested deeper than Python
    recurses raises RecursionError in the parser: a bad request, never a crash. Text holding a
    NUL byte raises BadRequest, and so does a body that would parse into more than ``max_values``
    values (counted first: a few MiB of ``[],`` would take hundreds of MB as Python lists).
    """
    if max_values is None:
        try:
            body = request.get_json(force=force, silent=True)
        except RecursionError:
            return None
        if not isinstance(body, dict):
            return None
        raw = request.get_data(cache=True)  # read already, and kept
        escaped = b"\\u0000" in raw or b"\x00" in raw  # UTF-16 and -32 bodies hold NUL bytes
    else:
        body, escaped = _bounded(force, max_values)
        if not isinstance(body, dict):
            return None
    if escaped:  # else no string can hold a NUL: JSON writes one only as \u0000
        require_text(body)
    return body


def require_text(value: object, what: str = "") -> None:
    """BadRequest if a string anywhere in ``value`` (keys included) holds a NUL byte. The error says
    where: ``what``, or in a JSON body the field (``messages[0].content``), also as ``param`` for the
    dialects that report one."""
    where = _nul_at(value)
    if where is not None:
        e = BadRequest(f"{what or where or 'the body'} holds a NUL character (\\u0000); no text may")
        e.param = None if what else where or None
        raise e


def _nul_at(value: object) -> str | None:
    """The path of the first string in ``value`` that holds a NUL ("" for ``value`` itself), or None.
    Depth first, paths made as they are reached: the walk holds one iterator per level, never a
    path per value."""
    if isinstance(value, str):
        return "" if "\x00" in value else None
    stack = [_children("", value)]
    while stack:
        for path, item in stack[-1]:
            if isinstance(item, str):
                if "\x00" in item:
                    return path
            elif isinstance(item, (dict, list, tuple)):
                stack.append(_children(path, item))
                break
        else:
            stack.pop()
    return None


def _children(path: str, item: object) -> Iterator[tuple[str, object]]:
    if isinstance(item, dict):
        for key, child in item.items():
            yield path, key  # a key is named by the object that holds it
            yield (f"{path}.{key}" if path else str(key)), child
    elif isinstance(item, (list, tuple)):
        for i, child in enumerate(item):
            yield f"{path}[{i}]", child


def check_request() -> None:
    """Before every route: no NUL byte in the path, the query or a form (JSON bodies: json_object)."""
    require_text(request.path, "the path")
    require_text(list(request.args.items(multi=True)), "the query")
    if request.mimetype in FORMS:
        # kept first: parsing the form consumes the body, and a client that posts JSON without saying
        # so (`curl -d`, as Ollama's own examples do) must still find it there
        request.get_data(cache=True, parse_form_data=False)
        require_text(list(request.form.items(multi=True)), "the form")


def _bounded(force: bool, max_values: int) -> tuple[object, bool]:
    """The parsed body, and whether it may hold a NUL character."""
    if not (force or request.is_json):
        return None, False
    raw = request.get_data(cache=False)  # bounded by request.max_content_length
    if b"\x00" in raw:  # a NUL byte is no part of UTF-8 JSON: UTF-16, or worse
        raise BadRequest("send the JSON as UTF-8 text")
    if _values(raw, max_values) > max_values:
        raise BadRequest(f"the body holds more than {max_values} JSON values")
    try:
        return json.loads(raw), b"\\u0000" in raw
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than Python recurses
        return None, False


def _values(raw: bytes, limit: int) -> int:
    """At most how many values ``raw`` parses into: every value but the first follows a comma, a
    colon or an opening bracket outside a string. Counted in C over all the text first (text holds
    commas too: this may count more), and past ``limit`` again outside strings, a slice at a time
    (a ``re.sub`` over millions of strings would take more memory than parsing them)."""
    n = _structural(raw) + 1
    if n <= limit:
        return n
    # with escapes taken out (left to right, as JSON reads them), every quote opens or closes a string
    bare = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    n, inside = 1, False
    for start in range(0, len(bare), SLICE_BYTES):
        parts = bare[start : start + SLICE_BYTES].split(b'"')
        n += _structural(b"".join(parts[1::2] if inside else parts[0::2]))
        inside ^= len(parts) % 2 == 0  # an odd number of quotes in the slice
        if n > limit:
            break
    return n


def _structural(text: bytes) -> int:
    return text.count(b",") + text.count(b":") + text.count(b"[") + text.count(b"{")


def json_body(limit: int, max_values: int | None = None) -> dict:
    """The request's JSON object, its size bounded before it is read (and, given ``max_values``,
    how many values it holds before it is parsed)."""
    if not request.is_json:
        raise UnsupportedMediaType("send application/json")
    if request.content_length is not None and request.content_length > limit:
        raise PromptTooLarge(f"the request body is larger than {limit} bytes")
    request.max_content_length = limit  # bounds a chunked body too
    body = json_object(max_values=max_values)
    if body is None:
        raise BadRequest("the body must be a JSON object")
    return body


def read_images(
    value: object, max_image_bytes: int, max_images_bytes: int, where: str = "images"
) -> list[Image]:
    """A prompt's images: each a base64 data URL (Jarvis fetches nothing), typed by its bytes, at
    most ``max_image_bytes``, and all together at most ``max_images_bytes`` (image_too_large)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f'"{where}" must be a list of data URLs (data:image/png;base64,...)')
    found, total = [], 0
    for i, item in enumerate(value):
        image = decode_image(item, max_image_bytes, f"{where}[{i}]", bare=False)
        total += len(image.data)
        if total > max_images_bytes:
            raise BadRequest(
                f"the images are larger than {max_images_bytes} bytes together (at most "
                f"{max_images_bytes} bytes in one request, {max_image_bytes} each)",
                code="image_too_large",
            )
        found.append(image)
    return found
