"""What the fakes put on the wire, without sockets: HTTP framing, Ollama's lines, and the answers.

The fake servers (tests/fake_ollama.py, tests/fake_openai.py) own the threads and the waits; this
module holds the pure parts they share: reading a request, framing a response, the shapes of
Ollama's NDJSON lines and /api/show, the JSON that answers a format request (a minimal instance of
a JSON schema), and the images a request carries in either dialect.
"""

from __future__ import annotations

import hashlib
import json
import socket

ALL_CAPABILITIES = ("completion", "tools", "thinking", "vision")


class ClientGone(Exception):
    """The client closed its side: the fake ends the call."""


# answers


def schema_instance(schema: dict, root: dict | None = None) -> object:
    """A minimal value that validates against ``schema`` (the subset tools and pydantic emit)."""
    root = schema if root is None else root
    if "$ref" in schema:  # "#/$defs/Name": pydantic puts nested models there
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return schema_instance(target, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return schema_instance(schema[key][0], root)
    if schema.get("allOf"):
        parts = [schema_instance(part, root) for part in schema["allOf"]]
        if all(isinstance(p, dict) for p in parts):
            return {k: v for p in parts for k, v in p.items()}
        return parts[0]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        names = schema.get("required") or list(properties)
        return {name: schema_instance(properties.get(name, {}), root) for name in names}
    if kind == "array":
        return [schema_instance(schema.get("items", {}), root) for _ in range(schema.get("minItems", 0))]
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True}.get(kind)


def json_text(fmt: str | dict) -> str:
    """The answer to a format request: "json" (any object) or a JSON schema."""
    return json.dumps({"answer": "tok"} if fmt == "json" else schema_instance(fmt))


def split(text: str, parts: int) -> list[str]:
    """``text`` in up to ``parts`` pieces of about equal length, as a model streams it."""
    step = -(-len(text) // max(1, min(parts, len(text))))
    return [text[i : i + step] for i in range(0, len(text), step)] or [""]


def answer_texts(texts: list[str], fmt: str | dict | None, images: int) -> list[str]:
    """The text tokens of an answer: JSON for a format (when there is text at all), else a note of
    the images the request carried, then the script's tokens."""
    if fmt is not None and texts:
        return split(json_text(fmt), 3)
    return [f"I see {images} image(s). ", *texts] if images else texts


def images_in(body: dict) -> list[str]:
    """The images a chat request carries, in order: Ollama's base64 ``images`` and the payloads of
    OpenAI's ``image_url`` parts (a URL that is not a data URL is listed as it came)."""
    found = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        found.extend(message.get("images") or [])
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = part.get("image_url")
                url = url.get("url", "") if isinstance(url, dict) else str(url)
                found.append(url.split(",", 1)[1] if url.startswith("data:") else url)
    return found


def text_of(content: object) -> object:
    """A message's text: a string as it is, OpenAI's content parts as their text joined."""
    if not isinstance(content, list):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def lacking(body: dict, has: list[str]) -> list[str]:
    """The capabilities a chat request needs that a model without ``has`` lacks."""
    needs = {
        "insert": bool(body.get("suffix")),
        "tools": bool(body.get("tools")),
        "thinking": body.get("think") not in (None, False, ""),  # true, or a level: "low", "high"
        "vision": bool(images_in(body)),
    }
    return [need for need, needed in needs.items() if needed and need not in has]


def arguments(call: dict) -> dict:
    """A scripted tool call's arguments as an object (a script may give them as a JSON string)."""
    args = call.get("arguments", {})
    return json.loads(args) if isinstance(args, str) else args


# Ollama's shapes


def message(model: str, text: str, *, done: bool, **extra) -> dict:
    """One line of Ollama's /api/chat stream; ``extra`` joins the message (thinking, tool_calls)."""
    return {
        "model": model,
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": text, **extra},
        "done": done,
    }


def ollama_tool_calls(calls: list[dict]) -> list[dict]:
    """Ollama's ``message.tool_calls``: arguments as an object; an id only when the script has one
    (newer Ollama versions add one, older ones do not)."""
    out = []
    for call in calls:
        function = {"name": call["name"], "arguments": arguments(call)}
        out.append({"id": call["id"], "function": function} if "id" in call else {"function": function})
    return out


def ollama_refusal(model: str, lacks: list[str]) -> str | None:
    """Ollama's error (with status 400) for a request the model cannot serve, as Ollama words it."""
    if "tools" in lacks:  # the model named in full, tag and all
        name = model if ":" in model else f"{model}:latest"
        return f"registry.ollama.ai/library/{name} does not support tools"
    if "thinking" in lacks:
        return f"{json.dumps(model)} does not support thinking"
    if "vision" in lacks:
        return "this model is missing data required for image input"
    if "insert" in lacks:
        return f"registry.ollama.ai/library/{model} does not support insert"
    return None


def show(capabilities: list[str]) -> dict:
    """Ollama's /api/show answer for a model with these capabilities."""
    return {
        "modelfile": "",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": {
            "format": "gguf",
            "family": "llama",
            "parameter_size": "1B",
            "quantization_level": "Q4_0",
        },
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
        "capabilities": list(capabilities),
        "modified_at": "2024-01-01T00:00:00Z",
    }


def vector(text: str, dims: int = 4) -> list[float]:
    """The fakes' embedding of ``text``: numbers from its hash, the same every time (dims <= 32)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255 - 0.5, 4) for b in digest[:dims]]


def embedded(body: dict, models: list[str], *, key: str = "input") -> tuple[int, list | str]:
    """(200, vectors) for an embedding request (``body[key]`` a text or a list), else (status, error)."""
    model = str(body.get("model") or "")
    if model.split(":")[0] not in models:
        return 404, f'model "{model}" not found, try pulling it first'
    texts = body.get(key)
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return 400, "invalid input type"
    return 200, [vector(t, body.get("dimensions") or 4) for t in texts]


def ollama_embed(path: str, body: dict, models: list[str]) -> tuple[int, dict]:
    """Ollama's /api/embed (``input``, a list of vectors) or older /api/embeddings (``prompt``, one)."""
    status, found = embedded(body, models, key="input" if path == "/api/embed" else "prompt")
    if status != 200:
        return status, {"error": found}
    if path == "/api/embeddings":
        return 200, {"embedding": found[0]}
    return 200, {"model": body["model"], "embeddings": found, "prompt_eval_count": 3 * len(found)}


def ps(models: list[str]) -> dict:
    """Ollama's /api/ps answer with these models loaded."""
    details = {"format": "gguf", "family": "llama", "parameter_size": "1B", "quantization_level": "Q4_0"}
    more = {
        "size": 1,
        "digest": "0" * 64,
        "details": details,
        "expires_at": "2030-01-01T00:00:00Z",
        "size_vram": 1,
    }
    loaded = [{"name": f"{m}:latest", "model": f"{m}:latest", **more} for m in models]
    return {"models": loaded}


def line(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


class Asked(str):
    """A model's name that knows the route it was asked on (``/api/generate`` frames differ)."""

    def __new__(cls, name: str, path: str):
        asked = super().__new__(cls, name)
        asked.path = path
        return asked


def generated(model: str, text: str, *, done: bool, **extra) -> dict:
    """One line of Ollama's /api/generate stream."""
    return {"model": model, "created_at": "2026-01-01T00:00:00Z", "response": text, "done": done, **extra}


def _generate(model: str) -> bool:
    return getattr(model, "path", "") == "/api/generate"


class OllamaFrames:
    """The frames of Ollama's /api/chat stream, one NDJSON line each (tests/fake_openai.py has
    OpenAI's)."""

    content_type = b"application/x-ndjson"

    def format(self, body: dict) -> str | dict | None:
        """The structured output the request asks for: "json", a JSON schema, or None."""
        fmt = body.get("format")
        return fmt if fmt == "json" or isinstance(fmt, dict) else None

    def opening(self, model: str) -> list[bytes]:
        return []

    def token(self, model: str, text: str) -> bytes:
        return line(
            generated(model, text, done=False) if _generate(model) else message(model, text, done=False)
        )

    def thinking(self, model: str, text: str) -> bytes:
        if _generate(model):
            return line(generated(model, "", done=False, thinking=text))
        return line(message(model, "", done=False, thinking=text))

    def tool_calls(self, model: str, calls: list[dict]) -> list[bytes]:
        return [line(message(model, "", done=False, tool_calls=ollama_tool_calls(calls)))]

    def error(self, error: str) -> bytes:
        return line({"error": error})

    def closing(self, model: str, done_reason: str, tool_calls: bool, tokens: int) -> list[bytes]:
        final = generated(model, "", done=True) if _generate(model) else message(model, "", done=True)
        final.update(done_reason=done_reason, prompt_eval_count=7, eval_count=tokens)
        return [line(final)]


# HTTP


class Body:
    """Writes a response body framed as chunks, with a Content-Length, or ended by closing."""

    def __init__(self, conn: socket.socket, framing: str):
        assert framing in ("chunked", "length", "close"), framing
        self.conn = conn
        self.framing = framing

    def head(self, content_type: bytes, length: int | None = None) -> None:
        if self.framing == "chunked":
            framing = b"Transfer-Encoding: chunked\r\n"
        elif self.framing == "length" and length is not None:
            framing = b"Content-Length: %d\r\n" % length
        else:
            framing = b""  # the body ends when the connection closes
        self.conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n%sConnection: close\r\n\r\n" % (content_type, framing)
        )

    def send(self, data: bytes) -> None:
        # one sendall per frame: the bench stamps each as it leaves
        self.conn.sendall(b"%x\r\n%s\r\n" % (len(data), data) if self.framing == "chunked" else data)

    def end(self) -> None:
        if self.framing == "chunked":
            self.conn.sendall(b"0\r\n\r\n")


def send_json(conn: socket.socket, status: int, obj: dict, *, keep_alive: bool = False) -> None:
    """A JSON answer; the connection closes after it unless ``keep_alive`` (an embedding's, as
    Ollama and OpenAI-compatible servers keep theirs)."""
    body = json.dumps(obj).encode()
    connection = b"keep-alive" if keep_alive else b"close"
    conn.sendall(
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: %s\r\n\r\n%s" % (status, len(body), connection, body)
    )


def read_request(conn: socket.socket) -> tuple[str, dict, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            raise ClientGone()
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for header in lines[1:]:
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            raise ClientGone()
        body += more
    return path, headers, json.loads(body) if body else {}
