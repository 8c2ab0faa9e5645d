"""Lifecycle log lines: one line per event, plain ``key=value`` text or JSON."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("jarvis")
_deferring = threading.local()  # .lines: the records ``deferred`` collects on this thread


def event(name: str, level: int = logging.INFO, **fields) -> None:
    """Log lifecycle event ``name`` with its fields (trace_id, session, ...)."""
    if log.isEnabledFor(level):
        extra = {"event": name, "fields": fields}
        lines = getattr(_deferring, "lines", None)
        if lines is None:
            log.log(level, name, extra=extra)
        else:  # the record keeps this moment's time
            lines.append(log.makeRecord(log.name, level, "(deferred)", 0, name, (), None, extra=extra))


@contextmanager
def deferred() -> Iterator[list[logging.LogRecord]]:
    """Collect this thread's event lines in the block instead of writing them; the caller writes
    them later with ``write``.

    A write lets go of the GIL; in the event loop's burst of cancels the workers those cancels
    woke would take it there, and the loop would read the next Stops behind their ends."""
    lines: list[logging.LogRecord] = []
    _deferring.lines = lines
    try:
        yield lines
    finally:
        _deferring.lines = None


def write(lines: list[logging.LogRecord]) -> None:
    """Write lines ``deferred`` collected, each with the time it was made."""
    for record in lines:
        log.handle(record)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        tail = "".join(f" {k}={_text(v)}" for k, v in fields.items())
        message = _escape_controls(record.getMessage())
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {message}{tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if not getattr(record, "event", None):
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(log_format: str) -> None:
    """Send jarvis logs to stderr once, in the configured format."""
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    for handler in log.handlers:
        if getattr(handler, "_jarvis", False):
            handler.setFormatter(formatter)
            return
    handler = logging.StreamHandler(sys.stderr)
    handler._jarvis = True
    handler.setFormatter(formatter)
    log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def _text(value) -> str:
    text = str(value)
    plain = text and text.isprintable() and not any(c in text for c in ' "=')
    return text if plain else json.dumps(text)  # quoted and escaped: CR or ESC cannot forge a line


def _escape_controls(text: str) -> str:
    # a message may carry a client's path: no CR, LF or ESC of it reaches the log raw
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
