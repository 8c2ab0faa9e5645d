"""Prometheus metrics, one registry per app (so several apps in one process never clash)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# milliseconds matter here: stop and supersede are promised within a few of them
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The counters and histograms Jarvis keeps; ``render()`` is the /metrics body."""

    def __init__(self, live_streams: Callable[[], int] | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        # in this order /metrics lists them
        self._add_stream_metrics(self.registry, live_streams)
        self._add_failure_and_host_metrics(self.registry)
        self._add_entry_metrics(self.registry)

    def _add_stream_metrics(self, r: CollectorRegistry, live_streams: Callable[[], int] | None) -> None:
        """Live streams, how they ended, and the lifecycle's timings."""
        self.live = Gauge("jarvis_live_streams", "Streams currently live.", registry=r)
        if live_streams is not None:
            self.live.set_function(live_streams)
        self.ended = Counter(
            "jarvis_streams_ended", "Streams ended, by terminal status.", ["status"], registry=r
        )
        self.supersede_wait = Histogram(
            "jarvis_supersede_wait_seconds",
            "Time a new stream waited for the session's previous worker.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.cancel_to_closed = Histogram(
            "jarvis_cancel_to_upstream_closed_seconds",
            "Time from a cancel (stop, supersede, disconnect, shutdown) to the upstream closed.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "jarvis_time_to_first_token_seconds",
            "Time from a prompt to its first token.",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("jarvis_tokens_streamed", "Text chunks streamed to clients.", registry=r)

    def _add_failure_and_host_metrics(self, r: CollectorRegistry) -> None:
        """Upstream failures, and per model host when JARVIS_UPSTREAMS names several."""
        self.upstream_errors = Counter(
            "jarvis_upstream_errors", "Upstream failures, by error code.", ["code"], registry=r
        )
        self.host_live = Gauge(
            "jarvis_host_live_answers", "Answers streaming, by host.", ["host"], registry=r
        )
        self.host_failures = Counter(
            "jarvis_host_failures", "Answers a host failed, by host and code.", ["host", "code"], registry=r
        )
        self.host_first_token = Histogram(
            "jarvis_host_time_to_first_token_seconds",
            "Time from sending a prompt to a host to its first token, by host.",
            ["host"],
            buckets=SLOW_BUCKETS,
            registry=r,
        )

    def _add_entry_metrics(self, r: CollectorRegistry) -> None:
        """Prompts refused at the door, and calls and tokens through the OpenAI and Ollama APIs."""
        self.rejected = Counter(
            "jarvis_rejected", "Prompts refused before a stream, by reason.", ["reason"], registry=r
        )
        self.compat_calls = Counter(
            "jarvis_compat_calls",
            "Calls through the OpenAI and Ollama APIs that started an answer, by dialect and user.",
            ["api", "user"],
            registry=r,
        )
        self.compat_tokens = Counter(
            "jarvis_compat_tokens",
            "Model tokens of answers through the OpenAI and Ollama APIs, by dialect, user and kind.",
            ["api", "user", "kind"],
            registry=r,
        )

    def unreachable(self) -> float:
        """Prompts that found the model server refusing or not accepting connections, so far."""
        return sum(
            self.registry.get_sample_value("jarvis_upstream_errors_total", {"code": code}) or 0.0
            for code in ("upstream_unavailable", "connect_timeout")
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
