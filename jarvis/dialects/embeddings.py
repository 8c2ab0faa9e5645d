"""Embeddings, as OpenAI's ``/v1/embeddings`` and Ollama's ``/api/embed`` (and older
``/api/embeddings``) take them: routes only (parse, call the upstream, answer).

An embedding is one bounded request and one JSON answer, not a stream: it goes through the
upstream's ``embed`` with the same credentials, model check and metrics as the chat routes, and
every wait is bounded by the upstream's timeouts. A batch is bounded in count and bytes
(JARVIS_EMBED_MAX_INPUTS, JARVIS_EMBED_MAX_BYTES) before anything reaches the upstream. The
vectors, checked by the upstream, go out in the JSON text the model server sent them in
(``upstream.vectors``): writing the numbers again cost more than all the rest.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import time
from array import array

from flask import Blueprint, current_app, g, request

from .. import log
from ..errors import Unsupported
from ..upstream import Embedded
from ..upstream.vectors import text_of
from . import common, fields, ollama, openai

bp = Blueprint("embeddings", __name__)

OPENAI_FIELDS = fields.Fields({"model", "input", "encoding_format", "dimensions", "user"}, {})
EMBED_FIELDS = fields.Fields({"model", "input", "truncate", "options", "keep_alive", "dimensions"}, {})
EMBEDDINGS_FIELDS = fields.Fields({"model", "prompt", "options", "keep_alive"}, {})
TOKEN_ARRAYS = (
    "token arrays are not supported: send the texts themselves (LangChain's OpenAIEmbeddings sends "
    "tokens unless it is built with check_embedding_ctx_length=False)"
)
ENCODINGS = ("float", "base64")


def jarvis():
    return current_app.extensions["jarvis"]


def _read(table: fields.Fields) -> tuple[dict, str]:
    """The request's body, its every field honoured or refused by ``table``, and the model it names."""
    j = jarvis()
    body = fields.read_json(j.config)
    table.check(body)
    return body, fields.model_name(body.get("model"), j.upstream.default_model)


@bp.post("/v1/embeddings")
def openai_embeddings():
    body, model = _read(OPENAI_FIELDS)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise fields.bad('"encoding_format" must be "float" or "base64"', "encoding_format")
    if not isinstance(body.get("user") or "", str):
        raise fields.bad('"user" must be a string', "user")
    inputs = _inputs(body.get("input"), jarvis().config, "input", tokens=TOKEN_ARRAYS)
    found = _embed("openai", model, inputs, body.get("user"), dimensions=_dimensions(body))
    encode = (lambda v: f'"{_base64(v)}"') if encoding == "base64" else text_of
    data = ",".join(
        f'{{"object":"embedding","index":{i},"embedding":{encode(v)}}}' for i, v in enumerate(found.vectors)
    )
    tokens = found.prompt_tokens or 0
    usage = json.dumps({"prompt_tokens": tokens, "total_tokens": tokens})
    return _json(f'{{"object":"list","data":[{data}],"model":{json.dumps(model)},"usage":{usage}}}')


@bp.post("/api/embed")
def ollama_embed():
    body, model = _read(EMBED_FIELDS)
    inputs = _inputs(body.get("input"), jarvis().config, "input")
    truncate = fields.flag(body, "truncate", None)  # None: the upstream's default
    began = time.monotonic()
    found = _embed(
        "ollama", model, inputs, truncate=truncate, dimensions=_dimensions(body), **_ollama_knobs(body)
    )
    rest = {
        "total_duration": int((time.monotonic() - began) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": found.prompt_tokens or 0,
    }
    vectors = ",".join(map(text_of, found.vectors))
    return _json(f'{{"model":{json.dumps(model)},"embeddings":[{vectors}],{json.dumps(rest)[1:]}')


@bp.post("/api/embeddings")
def ollama_embeddings():
    """Ollama's older route: one ``prompt``, one ``embedding``."""
    body, model = _read(EMBEDDINGS_FIELDS)
    if not isinstance(body.get("prompt"), str):
        raise fields.bad('"prompt" must be a string', "prompt")
    inputs = _inputs(body["prompt"], jarvis().config, "prompt")
    found = _embed("ollama", model, inputs, **_ollama_knobs(body))
    return _json(f'{{"embedding":{text_of(found.vectors[0])}}}')


def _inputs(raw, config, param: str, tokens: str | None = None) -> list[str]:
    """The texts to embed, a string or a list of strings, bounded in count and bytes."""
    texts = [raw] if isinstance(raw, str) else raw
    if tokens is not None and isinstance(texts, list) and texts and not isinstance(texts[0], str):
        if all(
            isinstance(t, int) or (isinstance(t, list) and all(isinstance(n, int) for n in t)) for t in texts
        ):
            raise fields.unsupported(param, tokens)
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise fields.bad(f'"{param}" must be a string or a non-empty list of strings', param)
    if len(texts) > config.embed_max_inputs:
        raise fields.bad(
            f'"{param}" holds {len(texts)} texts; at most {config.embed_max_inputs} '
            "(JARVIS_EMBED_MAX_INPUTS) are embedded in one request",
            param,
            "input_too_large",
        )
    size = sum(len(t.encode()) for t in texts)
    if size > config.embed_max_bytes:
        raise fields.bad(
            f'"{param}" holds {size} bytes of text; at most {config.embed_max_bytes} '
            "(JARVIS_EMBED_MAX_BYTES) are embedded in one request",
            param,
            "input_too_large",
        )
    return texts


def _dimensions(body: dict) -> int | None:
    return fields.number(body, "dimensions", 1, 65536, integer=True)


def _ollama_knobs(body: dict) -> dict:
    """Ollama's ``options`` (each one it documents) and ``keep_alive``, passed on as they are."""
    options = body.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise fields.bad('"options" must be an object', "options")
        ollama.OPTION_FIELDS.check(options, "options.")
    return {"options": options or None, "keep_alive": ollama._keep_alive(body.get("keep_alive"))}


def _embed(api: str, model: str, inputs: list[str], end_user: str | None = None, **knobs) -> Embedded:
    """The upstream's vectors for ``inputs``, counted and logged as a call of ``api`` by this user."""
    j = jarvis()
    models = current_app.extensions.setdefault("jarvis.model_names", common.ModelNames(j.upstream))
    models.check(model)
    user = g.user.name if g.get("user") is not None else ""
    j.metrics.compat_calls.labels(api, user).inc()
    if end_user:
        log.event("dialect_call", trace_id=secrets.token_hex(8), api=api, end_user=end_user[:256])
    try:
        found = j.upstream.embed(model, inputs, **knobs)
    except Unsupported as e:
        e.param = e.field
        raise
    if found.prompt_tokens:
        j.metrics.compat_tokens.labels(api, user, "prompt").inc(found.prompt_tokens)
    return found


def _json(text: str):
    """A JSON answer written here (the vectors in their own text): Flask's own would write them again."""
    return current_app.response_class(text, mimetype="application/json")


def _base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the vector as little-endian 32-bit floats."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


@bp.errorhandler(Exception)
def error(e: Exception):
    """Errors in the shape of the API the route belongs to."""
    return openai.error(e) if request.path.startswith("/v1/") else ollama.error(e)
