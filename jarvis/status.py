"""Why a stream was cancelled and how an answer ended: the one table every wing reads.

The values are the strings stored with an answer, carried by its end event and
logged; a reason that is not in the table is refused, never guessed at.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why a stream was cancelled."""

    STOPPED = "stopped"
    SUPERSEDED = "superseded"
    DISCONNECTED = "disconnected"
    SHUTDOWN = "shutdown"
    DELETED = "deleted"
    REVOKED = "revoked"  # the credential that started it was revoked

    __str__ = str.__str__


class Status(str, Enum):
    """How an answer ended: the status it is stored with and the end event carries."""

    COMPLETED = "completed"
    LENGTH = "length"  # cut by a token limit: not a finished answer
    STOPPED = "stopped"
    SUPERSEDED = "superseded"
    DISCONNECTED = "disconnected"
    TIMEOUT = "timeout"
    FAILED = "failed"

    __str__ = str.__str__


# cancel reason -> terminal status (every Reason is listed: cancel takes no other)
REASON_STATUS = {
    Reason.SUPERSEDED: Status.SUPERSEDED,
    Reason.STOPPED: Status.STOPPED,
    Reason.DISCONNECTED: Status.DISCONNECTED,
    Reason.SHUTDOWN: Status.STOPPED,
    Reason.DELETED: Status.STOPPED,
    Reason.REVOKED: Status.STOPPED,
}
REASON_EVENT = {Reason.STOPPED: "stream_stopped", Reason.DISCONNECTED: "stream_disconnected"}

# an answer still being written: every other status is an end. The store neither searches a
# live answer nor imports one as live, and it writes a live status as a checkpoint, never as the end
LIVE_STATUSES = ("pending", "queued", "streaming")
