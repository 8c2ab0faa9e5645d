"""Several model hosts behind one upstream: each prompt goes to a host that has its model.

``Hosts`` is itself an ``Upstream``, over one upstream per host of
``JARVIS_UPSTREAMS``; its ``Router`` chooses the host and queues a prompt in
the ``Line`` (``line.py``) while every host is full. Each host is probed in its own thread (health, then its
model list), so a host that hangs on a probe delays nothing but its own state.
A prompt goes to a host that is up and lists its model, the least busy first;
when every such host is at its ``;max=N`` limit the prompt queues, saying its
place, until one is free. A host that refuses a connection or times out is
skipped until a probe begun after the failure says it answers again. A prompt
whose host fails before any text is retried once on another host with the
model; once text has flowed the answer stays where it is. Every host stream
gets the prompt's own ``CancelScope``, so a cancel closes whichever host's
connection is open.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
import time
from collections.abc import Generator, Iterator

from .. import log
from ..cancel import CancelScope
from ..config import Config, ConfigError, HostSpec
from ..errors import ModelNotFound, UpstreamError, UpstreamUnavailable
from ..metrics import Metrics
from . import Chat, Embedded, Item, Meta, Progress, Upstream, count_tokens_of
from .health import FIRST_WAIT_S, Prober
from .line import Line

# kind -> (module, class, the Config field that holds its URL); imported when a host needs it
KINDS = {
    "ollama": ("jarvis.upstream.ollama", "OllamaUpstream", "ollama_url"),
    "openai": ("jarvis.upstream.openai", "OpenAIUpstream", "openai_url"),
}
RETRY_CODES = {  # the host failed, not the prompt: another host may answer it
    "upstream_unavailable",
    "connect_timeout",
    "upstream_disconnected",
    "upstream_http_error",
    "upstream_bad_response",
}
DOWN_CODES = {"upstream_unavailable", "connect_timeout"}  # skip the host until it answers a probe
CLOSE_WAIT_S = 1.0


def build(spec: HostSpec, config: Config) -> Upstream:
    """The upstream for one host, from the kind table."""
    module, cls, url_field = KINDS[spec.kind]
    try:
        kind = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"JARVIS_UPSTREAMS names a {spec.kind} host, but {module}.{cls} is missing") from e
    if url_field not in Config.__dataclass_fields__:
        raise ConfigError(f"JARVIS_UPSTREAMS names a {spec.kind} host, but Config has no {url_field}")
    return kind(dataclasses.replace(config, **{url_field: spec.url}))


def _base(name: str) -> str:
    return name.removesuffix(":latest")


class Host:
    """One model server: its upstream, its live answers and what its last probe said."""

    def __init__(self, spec: HostSpec, upstream: Upstream, interval_s: float):
        self.spec = spec
        self.url = spec.url
        self.upstream = upstream
        self.live = 0  # guarded by the router's lock
        self.started = 0  # answers begun here; breaks ties so equal hosts take turns
        self.failed_at = 0.0  # monotonic time of the last refused or timed-out connection
        self.models: list[str] = []  # last list the host gave; kept while it is down
        self.prober = Prober(self._probe, interval_s, name=spec.url)

    def _probe(self) -> dict:
        health = self.upstream.health()
        if health.get("ok"):
            try:
                self.models = [m["name"] for m in self.upstream.models()]
            except UpstreamError as e:
                return {**health, "ok": False, "error": e.to_dict()}
        return health

    @property
    def state(self) -> str:
        answer, at = self.prober.latest()
        if not at:
            return "unknown"
        return "up" if answer.get("ok") and at > self.failed_at else "down"

    def has(self, model: str) -> bool:
        return _base(model) in {_base(m) for m in self.models}

    def free(self) -> bool:
        return not self.spec.max_streams or self.live < self.spec.max_streams

    def describe(self) -> dict:
        answer, _ = self.prober.latest()
        out = {
            "url": self.url,
            "kind": self.spec.kind,
            "state": self.state,
            "live": self.live,
            "max_streams": self.spec.max_streams or None,
            "models": list(self.models),
        }
        if self.state != "up" and answer.get("error"):
            out["error"] = answer["error"]
        return out


class Router:
    """Chooses a host for each prompt: up with its model, the least busy first; queues it in
    line while every such host is full; leaves a host that failed to its probe."""

    def __init__(self, hosts: list[Host], metrics: Metrics):
        self.hosts = hosts
        self.metrics = metrics
        self._lock = threading.Lock()  # guards live, started, the line and what it hands over
        self._line = Line(self._lock, self.candidates)  # prompts waiting for a free host
        for host in hosts:
            self.metrics.host_live.labels(host.url).set_function(lambda h=host: h.live)

    def first(self, model: str) -> Upstream:
        with self._lock:  # as the line reads the hosts' states
            found = self.candidates(model, []) or self.hosts
        return found[0].upstream

    def up_with(self, model: str) -> list[Host]:
        with self._lock:
            return [h for h in self.hosts if h.state == "up" and h.has(model)]

    def candidates(self, model: str, tried: list[Host], retry: bool = False) -> list[Host]:
        """Hosts this prompt may use: up with the model; else up; else those not probed yet.

        A host its probe (or a prompt since) found down is left to its probe, which asks
        again within a second: a prompt that tried it would only be one more probe, and
        against a hung host it would wait there for its whole first-token timeout."""
        left = [h for h in self.hosts if h not in tried]
        up = [h for h in left if h.state == "up"]
        with_model = [h for h in up if h.has(model)]
        if retry:
            return with_model
        return with_model or up or [h for h in left if h.state == "unknown"]

    def none_answers(self, model: str) -> UpstreamUnavailable:
        """The error for a prompt no host can take: what the probes last said."""
        said = [h.describe().get("error", {}).get("message") for h in self.hosts]
        for host in self.hosts:
            host.prober.poke()  # ask again now: a host back up is used at once
        detail = "; ".join(f"{h.url}: {m}" for h, m in zip(self.hosts, said, strict=True) if m)
        return UpstreamUnavailable(f"no model host for {model} answers" + (f" ({detail})" if detail else ""))

    def take(
        self, model: str, cancel: CancelScope, tried: list[Host], deadline: float, busy_s: float
    ) -> Generator[Progress, None, Host | None]:
        """Reserve the least busy candidate host, queueing in order while all are full; None once
        cancelled."""
        with self._lock:
            if not self.candidates(model, tried):
                raise self.none_answers(model)
            waiter = self._line.join(model, tried)
        return (yield from self._line.wait(waiter, cancel, deadline, busy_s))

    def pick(self, model: str) -> Host:
        """Reserve the least busy host with the model at once, a free one first (never queued)."""
        with self._lock:
            found = self.candidates(model, [])
            if not found:
                raise self.none_answers(model)
            host = min(found, key=lambda h: (not h.free(), h.live, h.started))
            host.live += 1
            host.started += 1
        return host

    def release(self, host: Host) -> None:
        with self._lock:
            host.live -= 1
            self._line.dispatch()

    def failed(self, host: Host, e: UpstreamError) -> None:
        self.metrics.host_failures.labels(host.url, e.code).inc()
        if e.code in DOWN_CODES:
            host.failed_at = time.monotonic()
            host.prober.poke()  # find out soon when it is back
            log.event("host_down", host=host.url, code=e.code)


class Hosts:
    """An ``Upstream`` that routes each prompt to one of several hosts."""

    name = "hosts"

    def __init__(self, hosts: list[Host], config: Config, metrics: Metrics | None = None):
        self.hosts = hosts
        self.default_model = config.model
        self.config = config
        self.metrics = metrics or Metrics()
        self._router = Router(hosts, self.metrics)

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics | None = None) -> Hosts:
        """Build a host per JARVIS_UPSTREAMS entry and start probing them all at once."""
        hosts = [Host(spec, build(spec, config), config.health_interval_s) for spec in config.hosts()]
        router = cls(hosts, config, metrics)
        for host in hosts:
            host.prober.start(first_wait_s=0)
        deadline = time.monotonic() + FIRST_WAIT_S  # one hung host must not hold the start-up
        for host in hosts:
            host.prober.wait_first(deadline - time.monotonic())
        return router

    def stream_chat(self, chat: Chat, cancel: CancelScope, session: str | None = None) -> Iterator[Item]:
        """Stream from the least busy host with the model; retry once on another if it fails first.

        One first-token deadline covers the whole prompt: the wait in line, then each host."""
        tried: list[Host] = []
        model = chat.model
        first_token_s = self.config.first_token_timeout_s
        first_token_by = time.monotonic() + first_token_s
        while not cancel.cancelled:  # checkpoint: before a host is taken
            host = yield from self._router.take(model, cancel, tried, first_token_by, first_token_s)
            if host is None:
                return
            tried.append(host)
            began = time.monotonic()
            flowed = False
            chunks = None
            try:
                chunks = host.upstream.stream_chat(chat, cancel, session, first_token_by=first_token_by)
                for item in chunks:
                    if not flowed and not isinstance(item, (Progress, Meta)):  # text, thinking, a call
                        flowed = True
                        self.metrics.host_first_token.labels(host.url).observe(time.monotonic() - began)
                    yield item
                return
            except UpstreamError as e:
                self._router.failed(host, e)
                if flowed or cancel.cancelled or len(tried) > 1 or e.code not in RETRY_CODES:
                    raise
                if not self._router.candidates(model, tried, retry=True):
                    raise
                log.event("host_retry", host=host.url, code=e.code, session=session)
            finally:
                if chunks is not None:
                    chunks.close()
                self._router.release(host)

    def embed(self, model: str, inputs: list[str], **knobs) -> Embedded:
        """Embed on the least busy host with the model (a free one first); never queued or retried:
        a batch is short, and a client that gets an error may simply send it again."""
        host = self._router.pick(model)
        try:
            return host.upstream.embed(model, inputs, **knobs)
        except UpstreamError as e:
            self._router.failed(host, e)
            raise
        finally:
            self._router.release(host)

    def show(self, model: str) -> dict:
        """The ``/api/show`` of the first host up that lists the model."""
        found = self._router.up_with(model)
        if not found:
            raise ModelNotFound(f"no model host has {model!r}")
        return found[0].upstream.show(model)

    def running(self) -> list[dict]:
        """The union of the loaded models of the hosts up (a host that fails to say is left out)."""
        out = []
        for host in [h for h in self.hosts if h.state == "up"]:
            try:
                out.extend(host.upstream.running())
            except UpstreamError as e:
                log.event("host_ps_failed", host=host.url, code=e.code)
        return out

    def check(self, chat: Chat) -> None:
        """What the first host with the model (else the first up) says of ``chat``: hosts serving
        one model are meant to be alike."""
        self._router.first(chat.model).check(chat)

    def capabilities(self, model: str) -> frozenset[str] | None:
        return self._router.first(model).capabilities(model)

    def count_tokens(self, chat: Chat) -> int | None:
        """What the first host with the model counts (None: it cannot count; Ollama cannot)."""
        return count_tokens_of(self._router.first(chat.model), chat)

    def health(self) -> dict:
        """Each host's state from its last probe; no I/O here."""
        hosts = [h.describe() for h in self.hosts]
        ok = any(h["state"] == "up" for h in hosts)
        out = {"ok": ok, "backend": self.name, "model": self.default_model}
        if not out["ok"]:
            out["error"] = UpstreamUnavailable("no model host answers").to_dict()
        return {**out, "hosts": hosts}

    def models(self) -> list[dict]:
        """The union of the hosts' models, each with the hosts that have it."""
        where: dict[str, list[str]] = {}
        for host in self.hosts:
            for name in host.models:
                where.setdefault(name, []).append(host.url)
        return [{"name": name, "hosts": urls} for name, urls in where.items()]

    def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Stop every prober (bounded) and close every host's upstream."""
        deadline = time.monotonic() + timeout_s
        for host in self.hosts:
            host.prober.stop()
        for host in self.hosts:
            host.prober.close(deadline - time.monotonic())
            host.upstream.close()
