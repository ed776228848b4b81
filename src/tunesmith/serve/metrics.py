"""Prometheus metrics of one server: requests, tokens, latency, time to first token, queue.

Each app has its own registry, so two servers in one process (tests, benchmarks) do
not share counters, and ``/metrics`` shows exactly this server.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tunesmith_requests", "Requests answered, by route, model and HTTP status.",
            ["route", "model", "status"], registry=self.registry,
        )  # fmt: skip
        self.tokens = Counter(
            "tunesmith_tokens",
            "Tokens processed, by model and kind (prompt_tokens or completion_tokens).",
            ["model", "kind"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "tunesmith_request_latency_seconds", "Time from request to last token.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.first_token = Histogram(
            "tunesmith_time_to_first_token_seconds", "Time from request to first token.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "tunesmith_queue_wait_seconds", "Time a request waited before its batch started.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "tunesmith_queue_depth", "Requests waiting for the decoder.", registry=self.registry
        )
        self.batch_rows = Histogram(
            "tunesmith_batch_rows", "Rows (choices) decoded together in one batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)
