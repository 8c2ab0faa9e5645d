"""The tokenizer of the tests' ``llama_cpp.Llama`` stand-ins: one token per character."""

from __future__ import annotations


class CharTokens:
    """What ``LocalUpstream`` asks a model's tokenizer, answered with a token per character."""

    def token_bos(self):
        return -1

    def token_eos(self):
        return 2

    def detokenize(self, tokens, special=False):
        return "".join(chr(t) for t in tokens).encode()

    def tokenize(self, text, add_bos=True, special=False):
        return [ord(c) for c in text.decode()]
