"""An embedding answer read once: its vectors checked, each kept with the JSON text it came in.

Writing a batch's numbers out again cost more than the rest of Jarvis's work on it (a float's
repr is slow; 8,192 numbers took milliseconds), so a vector that passed the checks goes on to the
client in the server's own text. Nothing passes unchecked: the text is parsed by the standard
decoder (so it is JSON's, a number or a list of them), and ``checked`` wants as many vectors as
texts, each a non-empty list of finite numbers (no NaN, no Infinity: JSON has none), all of one
length. The whole answer is bounded before it is read (``remote.JSON_ANSWER_LIMIT``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from json.decoder import scanstring

from ..errors import UpstreamProtocolError

_scan = json.JSONDecoder().scan_once
_space = re.compile(r"[ \t\n\r]*")

Read = Callable[[int], tuple[object, int]]  # a value's reader: (value, where the value ends)


class Vector(list):
    """A vector as parsed, and ``json``: the text it came in, to be sent on as it is once checked."""

    __slots__ = ("json",)


def checked(found, n: int, peer: str) -> list[list[float]]:
    """``found`` checked as ``n`` vectors of finite numbers, all of one length; anything else is the
    server's fault (``UpstreamProtocolError``)."""
    if not isinstance(found, list) or len(found) != n:
        raise UpstreamProtocolError(f"{peer} sent {len(found) if isinstance(found, list) else 'no'} "
                                    f"embeddings for {n} inputs")  # fmt: skip
    size = None
    for vector in found:
        if not isinstance(vector, list) or not vector or not _finite_numbers(vector):
            raise UpstreamProtocolError(f"{peer} sent an embedding that is not a list of finite numbers")
        if size is None:
            size = len(vector)
        elif len(vector) != size:
            raise UpstreamProtocolError(f"{peer} sent embeddings of {size} and {len(vector)} numbers")
    return found


def _finite_numbers(vector: list) -> bool:
    # sum() runs in C and refuses anything but numbers (a string, a list, null); a NaN or an infinity
    # makes the total one; only then is each number looked at (two huge ones may overflow the sum)
    try:
        total = sum(vector)
    except (TypeError, OverflowError):
        return False
    return math.isfinite(total) or all(math.isfinite(x) for x in vector)


def answer(data: bytes, key: str, inner: str | None = None) -> dict:
    """The JSON object ``data``, parsed as ``json.loads`` would, but each vector under ``key`` (an
    array of vectors; with ``inner``, an array of objects holding their vector under ``inner``) a
    ``Vector`` with its text. Raises ``ValueError`` for anything that is not one JSON object."""
    reader = _Reader(data.decode())
    vector = reader.vector
    items = vector if inner is None else (lambda pos: reader.object(pos, inner, vector))
    pos = reader.space(0)
    found, end = reader.object(pos, key, lambda p: reader.array(p, items))
    if not isinstance(found, dict) or reader.space(end) != len(reader.text):
        raise ValueError("not one JSON object")
    return found


class _Reader:
    """JSON text read by the standard decoder's scanner, down the path to the vectors by hand."""

    def __init__(self, text: str):
        self.text = text

    def space(self, pos: int) -> int:
        return _space.match(self.text, pos).end()

    def value(self, pos: int) -> tuple[object, int]:
        try:
            return _scan(self.text, pos)
        except StopIteration:
            raise ValueError(f"no JSON value at {pos}") from None

    def vector(self, pos: int) -> tuple[object, int]:
        found, end = self.value(pos)
        if not isinstance(found, list):
            return found, end  # the check says what is wrong with it
        out = Vector(found)
        out.json = self.text[pos:end]
        return out, end

    def object(self, pos: int, key: str, read: Read) -> tuple[object, int]:
        """An object whose ``key`` is read by ``read``; anything else is read whole."""
        text = self.text
        if not text.startswith("{", pos):
            return self.value(pos)
        out: dict = {}
        pos = self.space(pos + 1)
        if text.startswith("}", pos):
            return out, pos + 1
        while True:
            if not text.startswith('"', pos):
                raise ValueError(f"no key at {pos}")
            name, pos = scanstring(text, pos + 1)
            pos = self.space(pos)
            if not text.startswith(":", pos):
                raise ValueError(f"no colon at {pos}")
            out[name], pos = (read if name == key else self.value)(self.space(pos + 1))
            pos, done = self.after_item(pos, "}")
            if done:
                return out, pos

    def array(self, pos: int, read: Read) -> tuple[object, int]:
        """An array whose items are read by ``read``; anything else is read whole."""
        text = self.text
        if not text.startswith("[", pos):
            return self.value(pos)
        out: list = []
        pos = self.space(pos + 1)
        if text.startswith("]", pos):
            return out, pos + 1
        while True:
            item, pos = read(pos)
            out.append(item)
            pos, done = self.after_item(pos, "]")
            if done:
                return out, pos

    def after_item(self, pos: int, close: str) -> tuple[int, bool]:
        """Past what follows an item: (the next item's start, False) after a comma, (past ``close``,
        True) at the end."""
        pos = self.space(pos)
        if self.text.startswith(",", pos):
            return self.space(pos + 1), False
        if self.text.startswith(close, pos):
            return pos + 1, True
        raise ValueError(f"no comma or {close} at {pos}")


def text_of(vector: list) -> str:
    """A checked vector as JSON: the server's own text when it came with one."""
    raw = getattr(vector, "json", None)
    return raw if raw is not None else json.dumps(vector)
