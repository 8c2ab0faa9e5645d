"""Stop sequences are matched by Jarvis on the streamed text, the same on every dialect and backend.

Ollama and OpenAI-compatible servers strip a stop sequence and say only "stop", so a client could
not tell it from the model's own end: Jarvis sends them none, cuts the answer at the first match
(holding back only text that may begin one), ends it as completed with the sequence named, and
closes the upstream at once. Anthropic's clients get ``stop_reason: "stop_sequence"`` and
``stop_sequence``; OpenAI's ``finish_reason: "stop"``; Ollama's ``done_reason: "stop"``.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import HTTP_TIMEOUT, both_upstreams, wait_for

HELLO = [{"role": "user", "content": "hello"}]
# "END" comes split across two chunks; what follows it must never be shown
SPLIT = ["Hello", " wor", "ld. EN", "D more", " text"]


def _no_stop_upstream(served) -> None:
    """The upstream was sent no stop sequence: it would strip it and hide that it matched."""
    (call,) = served.fake.chat_calls()
    body = call.body
    assert "stop" not in (body.get("options") or {}) and "stop" not in body, body


@both_upstreams
def test_a_message_cut_by_a_stop_sequence_says_which(claude, served):
    served.fake.script(tokens=SPLIT)
    message = claude.messages.create(
        model="tiny", max_tokens=100, messages=HELLO, stop_sequences=["zz", "END"]
    )
    assert [b.text for b in message.content] == ["Hello world. "]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    _no_stop_upstream(served)
    wait_for(served.idle, what="slot released")


def test_a_streamed_message_cut_by_a_stop_sequence_shows_nothing_past_it(claude, served):
    served.fake.script(tokens=SPLIT, interval_s=0.01)
    with claude.messages.stream(model="tiny", max_tokens=100, messages=HELLO, stop_sequences=["END"]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello world. "
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")
    _no_stop_upstream(served)


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_sequence_that_never_matches_ends_the_turn_with_all_the_text(claude, served, stream):
    # the last chunk ends in "EN", which might have begun "END": it is held back, then given out whole
    served.fake.script(tokens=["one ", "two EN"])
    kwargs = {"model": "tiny", "max_tokens": 100, "messages": HELLO, "stop_sequences": ["END"]}
    if stream:
        with claude.messages.stream(**kwargs) as s:
            text = "".join(s.text_stream)
            message = s.get_final_message()
        assert text == "one two EN"
    else:
        message = claude.messages.create(**kwargs)
    assert [b.text for b in message.content] == ["one two EN"]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)


@pytest.mark.timeout(30)
def test_a_stop_sequence_ends_the_answer_closes_the_upstream_and_is_stored(claude, served):
    # without the end at the match, Jarvis would read the upstream's 1000 tokens (10 s) to their end
    served.fake.script(tokens=["a ", "b ", "ST", "OP", *["x "] * 1000], interval_s=0.01)
    sid = served.session()
    joined = claude.with_options(default_headers={"X-Jarvis-Session": sid})
    began = time.monotonic()
    message = joined.messages.create(model="tiny", max_tokens=2000, messages=HELLO, stop_sequences=["STOP"])
    took = time.monotonic() - began
    assert [b.text for b in message.content] == ["a b "] and message.stop_sequence == "STOP"
    (call,) = served.fake.chat_calls()
    assert call.wait_closed(2) and call.closed_by == "client"
    assert call.tokens_sent < 100 and took < 3, (call.tokens_sent, took)
    wait_for(served.idle, what="slot released")
    stored = served.messages(sid)[-1]
    assert (stored["role"], stored["content"], stored["status"]) == ("assistant", "a b ", "completed")
    assert stored["meta"]["stop_sequence"] == "STOP"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_stop_cuts_the_answer_with_finish_reason_stop(oai, served, stream):
    served.fake.script(tokens=SPLIT)
    kwargs = {"model": "tiny", "messages": HELLO, "stop": ["END"]}
    if stream:
        chunks = list(oai.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        choice = oai.chat.completions.create(**kwargs).choices[0]
        text, finish = choice.message.content, choice.finish_reason
    assert (text, finish) == ("Hello world. ", "stop")
    _no_stop_upstream(served)


def test_ollama_options_stop_cuts_the_answer_with_done_reason_stop(served):
    served.fake.script(tokens=SPLIT)
    body = {"model": "tiny", "messages": HELLO, "stream": False, "options": {"stop": ["END"]}}
    r = requests.post(served.url + "/api/chat", json=body, headers=served.auth, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["message"]["content"], answer["done_reason"]) == ("Hello world. ", "stop")
    _no_stop_upstream(served)


@pytest.mark.parametrize(
    "stops, chunks, shown, matched",
    [
        (["END"], ["Hello EN", "D x"], ["Hello ", ""], "END"),  # split across two chunks
        (["END"], ["EN", "x"], ["", "ENx"], None),  # a partial match that fails is given out whole
        (["aab"], ["a", "a", "a", "b"], ["", "", "a", ""], "aab"),  # a tail that overlaps itself
        (["b", "ab"], ["xab"], ["x"], "ab"),  # the earliest match wins
        (["ab", "abc"], ["abc"], [""], "ab"),  # at one place, the sequence listed first
        ([], ["END"], ["END"], None),
    ],
)
def test_the_matcher_holds_back_only_what_may_begin_a_sequence(stops, chunks, shown, matched):
    from jarvis.upstream.stops import StopMatcher

    m = StopMatcher(tuple(stops))
    assert [m.feed(c) for c in chunks] == shown
    assert m.matched == matched
    assert m.flush() == "" or matched is None
