"""Prometheus metrics, one registry per app so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mmserve_requests", "Requests by task, endpoint and HTTP status", ["task", "endpoint", "status"], registry=r)
        self.latency = Histogram("mmserve_request_latency_seconds", "End-to-end request latency", ["task", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("mmserve_queue_depth", "Requests waiting for a decode slot", ["task"], registry=r)
        self.active_sequences = Gauge("mmserve_active_sequences", "Sequences in the decode loop", ["task"], registry=r)
        self.encode_batch = Histogram("mmserve_encode_batch_size", "Inputs per encoder batch", ["task"], buckets=BATCH_BUCKETS, registry=r)
        self.decode_batch = Histogram("mmserve_decode_batch_size", "Sequences per decoder step", ["task"], buckets=BATCH_BUCKETS, registry=r)
        self.tokens = Counter("mmserve_generated_tokens", "Tokens emitted", ["task"], registry=r)
        self.rejected = Counter("mmserve_rejected", "Requests shed because the queue was full", ["task"], registry=r)
        self.segments = Histogram("mmserve_input_segments", "Parts a request's input was cut into (1: whole)", ["task"], buckets=BATCH_BUCKETS, registry=r)
