"""The control channel (pub/sub ``jarvis:control``): what one process tells the others.

- ``cancel`` (a prompt: cancel the session's older streams) and ``stop`` (a Stop or a delete), each
  with the ticket it applies below: a late message never cancels a newer prompt;
- ``released``: a lease was given back; the processes waiting for it look at once;
- ``attach`` and ``detach``: a reader in another process follows a live answer (``mirror.py``).

Prompts are ordered by a **ticket** taken from Redis's clock when they arrive (strictly increasing
per session). A message that cannot be handled (a bug, a foreign program on the channel, an
unknown reason) is logged and skipped: the listener stays on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .. import log
from ..status import Reason
from . import CancelOlder
from .link import Link

CHANNEL = "jarvis:control"
RETRY_S = 0.5  # the listener resubscribes this often while Redis is away
TICKET_TTL_MS = 86_400_000  # a session's last ticket is kept a day: longer than any answer
TICKET_DIGITS = 20  # a ticket is Redis's clock in microseconds: 16 digits today

# a ticket from Redis's clock in microseconds, above the session's last (so it survives a restart of
# Redis), published with the message: every stream of the session with a lower ticket ends. A prompt
# ("cancel") keeps it as the session's last; a Stop needs only the ordering.
TICKET = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local v = redis.pcall('get', KEYS[1])
local last = type(v) == 'string' and tonumber(v) or 0  -- garbage, or a key of another type: none
if now <= last then now = last + 1 end
local ticket = string.format('%.0f', now)
if ARGV[3] == 'cancel' then redis.call('set', KEYS[1], ticket, 'PX', ARGV[4]) end
redis.call('publish', ARGV[1], ARGV[2] .. ticket)
return ticket
"""


def ticket_key(key: str) -> str:
    return "jarvis:ticket:" + key


def number(text: str, digits: int) -> int | None:
    """``text`` as a number when it is 1 to ``digits`` ASCII digits, else None."""
    return int(text) if 0 < len(text) <= digits and text.isascii() and text.isdigit() else None


def released(key: str) -> str:
    return f"released\t{key}"


def attach(key: str, owner: str, reader: str, last_event_id: str) -> str:
    return f"attach\t{key}\t{owner}\t{reader}\t{last_event_id}"


def detach(reader: str) -> str:
    return f"detach\t{reader}"


class Control:
    """Publishes on the channel, and hears it (``listen``, the loop of the listener thread)."""

    def __init__(
        self,
        link: Link,
        cancel: CancelOlder,
        subscribed: Callable[[], None],
        released: Callable[[str], None],
        attach: Callable[[str, str, str | None], None],
        detach: Callable[[str], None],
    ):
        """``cancel(key, before_ticket, reason)`` cancels this process's older streams of ``key``;
        ``subscribed()`` runs before a (re)subscription counts; ``released(key)`` wakes the waiters
        for ``key``'s lease; ``attach(key, reader, last_event_id)`` serves a remote reader of an
        answer of this process, and ``detach(reader)`` ends it."""
        self.link = link
        self._ticket = link.redis.register_script(TICKET)
        self._on_cancel = cancel
        self._on_subscribed = subscribed
        self._on_released = released
        self._on_attach = attach
        self._on_detach = detach
        self._pubsub = None

    def cancel(self, key: str) -> int:
        """A new prompt's ticket for ``key``, kept as the session's last: every process cancels its
        streams of ``key`` with a lower ticket (superseded)."""
        return self._ticketed("cancel", key, Reason.SUPERSEDED)

    def stop(self, key: str, reason: Reason) -> int:
        """Every process stops its streams of ``key`` older than now with ``reason``."""
        return self._ticketed("stop", key, reason)

    def _ticketed(self, op: str, key: str, reason: Reason) -> int:
        # the script appends the ticket: "op key reason process ticket"
        message = f"{op}\t{key}\t{reason}\t{self.link.process_id}\t"
        args = [CHANNEL, message, op, TICKET_TTL_MS]
        return int(self.link.call(self._ticket, keys=[ticket_key(key)], args=args))

    def cancel_again(self, key: str, ticket: int) -> None:
        """Tell every process once more to cancel ``key``'s streams below ``ticket``."""
        message = f"cancel\t{key}\t{Reason.SUPERSEDED}\t{self.link.process_id}\t{ticket}"
        self.link.call(self.link.redis.publish, CHANNEL, message)

    def listen(self) -> None:
        """Hear the channel until the link closes; resubscribe while Redis is away."""
        link = self.link
        while not link.closing.is_set():
            try:
                if self._pubsub is None:
                    self._pubsub = link.redis.pubsub(ignore_subscribe_messages=True)
                    self._pubsub.subscribe(CHANNEL)
                    self._on_subscribed()  # alive before any lease of ours can be taken
                    link.subscribed.set()
                    link.error = None
                message = self._pubsub.get_message(timeout=0.2)
                if message is not None:
                    self._handle_safely(message["data"])
            except link.errors as e:
                self._lost(e)
                link.closing.wait(RETRY_S)
            except Exception as e:  # a refused SUBSCRIBE, or a bug in the loop: say so, and do not spin
                log.log.exception("coordination listener failed")
                self._lost(e)
                link.closing.wait(RETRY_S)
        self._lost(None)

    def _lost(self, error: Exception | None) -> None:
        self.link.subscribed.clear()
        if error is not None:
            if self.link.error is None:
                log.event("coord_unavailable", logging.WARNING, error=str(error))
            self.link.error = f"{type(error).__name__}: {error}"
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None

    def _handle_safely(self, data: str) -> None:
        """Handle one message; one that fails is logged and skipped: the listener must hear the next
        (a Stop), whatever a message carried."""
        try:
            self._handle(data)
        except Exception as e:  # whatever it was: a message must never take the listener off the channel
            log.log.exception("control message failed (%s): %r", type(e).__name__, str(data)[:200])

    def _handle(self, data: str) -> None:
        op, _, rest = data.partition("\t")
        fields = rest.split("\t")
        if op == "released" and len(fields) == 1:
            self._on_released(fields[0])
        elif op in ("cancel", "stop") and len(fields) == 4 and number(fields[3], TICKET_DIGITS) is not None:
            key, reason, _, ticket = fields
            try:
                reason = Reason(reason)
            except ValueError:  # a misspelt reason must never end an answer as "stopped"
                log.event("coord_message_ignored", logging.WARNING, message=data[:200])
                return
            self._on_cancel(key, int(ticket), reason)
        elif op == "attach" and len(fields) == 4:
            key, owner, reader, last = fields
            if owner == self.link.process_id:
                self._on_attach(key, reader, last or None)
        elif op == "detach" and len(fields) == 1:
            self._on_detach(fields[0])
        else:  # another program on the channel: not ours to act on
            log.event("coord_message_ignored", logging.WARNING, message=data[:200])
