"""What every scenario shares: the servers as subjects, the old answer's states, bounded runners.

The three states of an answer that a new prompt, a Stop or a disconnect can
meet are scripted in the fake: ``streaming`` (a token every 20 ms),
``stalled`` (three tokens, then silence) and ``loading`` (no response
headers yet). Silent states are where a flag checked between chunks is
never looked at, so they are measured as carefully as the busy one.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass, field

from .client import Closed, Control, EventStream, ProtocolError
from .servers import ProcStat, proc_stat
from .upstream import Fake, directive

STATES = ("streaming", "stalled", "loading")
OLD_SCRIPT = {
    "streaming": {"tokens": 100_000, "interval_s": 0.02},
    "stalled": {"tokens": 100, "stall_after": 3},
    "loading": {"tokens": 5, "load_delay_s": 60.0},
}
SHORT = {"tokens": 3}  # the new prompt's answer: its first token is what we time
PHASE_S = 0.02  # the old stream's token interval: a new request lands at a random point in it
STEP_TIMEOUT_S = 10.0  # any single wait inside a trial
TRIAL_ERRORS = (TimeoutError, Closed, ProtocolError, OSError)

_tags = itertools.count()


def tag(prefix: str) -> str:
    """A run-unique name for one upstream call, carried in its prompt."""
    return f"{prefix}{next(_tags)}"


@dataclass
class Subject:
    """A server under test, as the scenarios see it."""

    name: str
    url: str
    pid: int | None
    fake: Fake | None  # the scripted upstream it reads, when it is ours
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    _local: threading.local = field(default_factory=threading.local)

    @property
    def scripted(self) -> bool:
        return self.fake is not None

    def states(self) -> tuple[str, ...]:
        return STATES if self.scripted else ("streaming",)

    def control(self) -> Control:
        """This thread's keep-alive connection for JSON calls."""
        control = getattr(self._local, "control", None)
        if control is None:
            control = self._local.control = Control(self.url)
        return control

    def session(self) -> str:
        return self.control().session()

    def stat(self) -> ProcStat | None:
        return proc_stat(self.pid) if self.pid else None

    def send(self, sid: str, name: str, timeout: float = STEP_TIMEOUT_S, **script) -> EventStream:
        return EventStream(
            self.url,
            f"/api/sessions/{sid}/messages",
            {"content": directive(name, session=sid, **script)},
            timeout=timeout,
        )

    def open_in(self, state: str, prefix: str) -> tuple[str, str, EventStream]:
        """A new session whose answer is in ``state``: (session, tag, stream)."""
        sid = self.session()
        name = tag(prefix)
        stream = self.send(sid, name, **OLD_SCRIPT[state])
        if stream.status != 200:
            raise ProtocolError(f"{self.name} refused a prompt: {stream.status} {stream.error}")
        reach(self, stream, state, name)
        return sid, name, stream

    def phase(self) -> None:
        """Wait a random part of one token interval, so requests do not land in step with tokens."""
        time.sleep(self.rng.uniform(0, PHASE_S))

    def close(self) -> None:
        control = getattr(self._local, "control", None)
        if control is not None:
            control.close()


def reach(subject: Subject, stream: EventStream, state: str, name: str) -> None:
    """Block until the answer is in ``state`` as the upstream sees it."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    if state == "streaming":
        stream.tokens(1, deadline)
    elif state == "stalled":
        stream.tokens(OLD_SCRIPT["stalled"]["stall_after"], deadline)
    else:
        stream.until(("start",), deadline)
        if not subject.fake.wait_open(name, STEP_TIMEOUT_S):
            raise TimeoutError("the upstream never saw the call")


def run_trials(
    fn, count: int, workers: int = 1, done=lambda: None, until: float | None = None
) -> tuple[list, int]:
    """Run ``fn(i)`` for i < count on ``workers`` threads; returns results (None on failure) and failures.

    Failures are bounded waits that ran out (a server that hangs); anything
    else is a bug in the bench or a crashed server and propagates. Each
    thread calls ``done()`` as it ends (to close its connections). Past
    ``until`` (a time.monotonic), no new trial starts.
    """
    results: list = [None] * count
    failures = [0]
    crashed: list[BaseException] = []
    indexes = iter(range(count))
    lock = threading.Lock()

    def loop() -> None:
        try:
            while not crashed:
                with lock:
                    i = next(indexes, None)
                if i is None or (until is not None and time.monotonic() > until):
                    return
                try:
                    results[i] = fn(i)
                except TRIAL_ERRORS:
                    with lock:
                        failures[0] += 1
        except BaseException as e:  # re-raised in the caller's thread below
            crashed.append(e)
        finally:
            done()

    if workers == 1:
        loop()
    else:
        threads = [threading.Thread(target=loop, name=f"bench-trial-{n}") for n in range(workers)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60 + count * STEP_TIMEOUT_S * 3 / workers
        if until is not None:
            deadline = min(deadline, until + 60 + STEP_TIMEOUT_S * 3)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            raise RuntimeError("bench trial threads did not finish in time")
    if crashed:
        raise crashed[0]
    return results, failures[0]
