"""The grammars that hold the embedded model's answer to a format.

llama.cpp can only sample tokens a GBNF grammar allows, so an answer asked for
as JSON ("json": any object) or as a JSON schema (a forced tool call's too,
``forced.py``) is held to it token by token, and parses when it ends. A
grammar costs nothing at decode time (the abort callback still breaks every
decode); sampling checks each candidate token against it between decodes.

llama.cpp kills the process on a grammar it cannot parse (a NULL sampler in
the chain), so each one is parsed once on its own first, and a schema that
cannot become a grammar is refused, named, before the answer starts.
"""

from __future__ import annotations

import functools
import json

from ..conversation import Format
from ..errors import Unsupported, UpstreamUnavailable

GRAMMARS_KEPT = 32  # distinct formats whose grammar is kept: building one costs ~0.2 ms, parsing more
MAX_SCHEMA_CHARS = 64_000  # a schema past this is refused rather than converted (the converter recurses)


def of(fmt: Format, field: str = "format"):
    """The ``LlamaGrammar`` that holds an answer to ``fmt`` (None for free text); ``Unsupported``
    naming ``field`` when llama.cpp cannot hold one to it."""
    if fmt is None:
        return None
    if fmt != "json" and not isinstance(fmt, dict):
        raise Unsupported(field, 'the embedded model takes "json" or a JSON schema (an object) as a format')
    key = "json" if fmt == "json" else json.dumps(fmt, separators=(",", ":"))  # key order: the grammar's
    if len(key) > MAX_SCHEMA_CHARS:
        raise Unsupported(field, f"the schema is longer than {MAX_SCHEMA_CHARS} characters")
    try:
        return _built(key)
    except _Refused as e:
        raise Unsupported(field, f"the embedded model cannot hold an answer to this schema: {e}") from None


class _Refused(Exception):
    """A schema that makes no grammar llama.cpp can parse (not cached: ``lru_cache`` keeps only returns)."""


# a pure function of its argument, so a process-wide memo is safe; lru_cache is thread-safe
@functools.lru_cache(maxsize=GRAMMARS_KEPT)
def _built(key: str):
    try:
        import llama_cpp
        from llama_cpp import llama_grammar
    except (ImportError, OSError, RuntimeError) as e:
        raise UpstreamUnavailable(f"llama-cpp-python is not usable ({e})") from e
    if key == "json":
        text = llama_grammar.JSON_GBNF
    else:
        try:
            text = llama_grammar.json_schema_to_gbnf(key)
        # the converter validates with assert and fails on shapes it does not expect
        except (AssertionError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise _Refused(str(e) or type(e).__name__) from None
    _parse(llama_cpp, text)
    return llama_grammar.LlamaGrammar.from_string(text, verbose=False)


def _parse(llama_cpp, text: str) -> None:
    """Let llama.cpp parse ``text`` on its own (no vocabulary is needed to parse), so that a
    grammar it refuses is refused here rather than crashing the process mid-answer."""
    from .gguf import _route_llama_logs

    _route_llama_logs(llama_cpp)  # its parse errors go to the log, not stderr
    sampler = llama_cpp.llama_sampler_init_grammar(None, text.encode("utf-8"), b"root")
    if not sampler:
        raise _Refused("llama.cpp cannot parse the grammar it makes (an empty enum, a ref to itself...)")
    llama_cpp.llama_sampler_free(sampler)
