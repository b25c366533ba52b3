"""Prometheus metrics of the server (``GET /metrics``): requests by status, token counts, latencies, load."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class ServerMetrics:
    """One registry per server, so that several servers (tests) in one process do not collide."""

    def __init__(self, engine):
        self.engine = engine
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mossvl_requests", "Finished requests by HTTP status", ["status"], registry=self.registry
        )
        self.prompt_tokens = Counter("mossvl_prompt_tokens", "Prompt text tokens", registry=self.registry)
        self.completion_tokens = Counter(
            "mossvl_completion_tokens", "Generated tokens", registry=self.registry
        )
        self.vision_tokens = Counter(
            "mossvl_vision_tokens", "Vision-memory entries of the requests' media", registry=self.registry
        )
        self.ttft = Histogram(
            "mossvl_time_to_first_token_seconds",
            "Arrival to first generated token",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.per_token = Histogram(
            "mossvl_time_per_output_token_seconds",
            "Time between generated tokens",
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "mossvl_queue_depth", "Requests waiting for admission", registry=self.registry
        )
        self.running = Gauge(
            "mossvl_running_requests", "Requests prefilling or decoding", registry=self.registry
        )

    def record_result(self, result) -> None:
        self.prompt_tokens.inc(result.prompt_tokens)
        self.completion_tokens.inc(result.completion_tokens)
        self.vision_tokens.inc(result.vision_tokens)
        if result.first_token_time is not None:
            self.ttft.observe(result.first_token_time - result.arrival_time)
            if result.completion_tokens > 1:
                gap = (result.finish_time - result.first_token_time) / (result.completion_tokens - 1)
                self.per_token.observe(gap)

    def render(self) -> bytes:
        stats = self.engine.stats()
        self.queue_depth.set(stats["waiting"])
        self.running.set(stats["running"])
        return generate_latest(self.registry)
