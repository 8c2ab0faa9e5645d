"""Runs ``jarvis serve`` with a backend whose worker gets stuck in a blocking call, ignoring cancel.

``python -m tests.stuck_serve upstream|local serve --port N``: the first word picks
the stuck backend (an upstream, or the embedded backend around a model stand-in);
the rest are ``jarvis`` arguments. Shutdown tests use it to prove the process
still exits in time.
"""

from __future__ import annotations

import sys
import threading

import jarvis
from jarvis import cli
from jarvis.upstream import gguf, local
from tests.char_tokens import CharTokens

STUCK_S = 120  # far past any shutdown deadline a test allows


class StuckUpstream:
    """Sends one chunk, then blocks without looking at cancel."""

    name, default_model = "stuck", "stuck"

    def stream_chat(self, chat, cancel, session=None):
        yield "a"
        threading.Event().wait(STUCK_S)

    def health(self):
        return {"ok": True, "backend": self.name, "model": self.default_model}

    def models(self):
        return [{"name": self.default_model}]

    def close(self):
        pass


class StuckLlama(CharTokens):
    """A model stand-in whose decode, after one token, never returns nor polls the abort flag."""

    metadata = {"tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}

    def reset(self):
        pass

    def close(self):
        pass

    def create_completion(self, tokens, max_tokens, stream, **sampling):
        yield {"choices": [{"text": "a", "finish_reason": None}]}
        threading.Event().wait(STUCK_S)


def main(argv: list[str]) -> int:
    kind, rest = argv[0], argv[1:]
    if kind == "local":
        gguf._install_abort = lambda llama, check: None
        jarvis.select_upstream = lambda *_: local.LocalUpstream(llama=StuckLlama(), model_name="stuck")
    else:
        jarvis.select_upstream = lambda *_: StuckUpstream()
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
