"""Prometheus metrics of the search service, on their own registry.

A registry per server (not the process-global one) keeps tests and several servers
in one process from adding up each other's counts.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("trademark_requests", "Answers given, by RPC and status code "
                                "(each SearchStream item counts once)", ["method", "code"],
                                registry=r)
        self.latency = Histogram("trademark_request_seconds", "Time to answer, by RPC",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("trademark_encode_batch_size", "Images per encoder batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.index_marks = Gauge("trademark_index_marks", "Marks in the loaded index",
                                 registry=r)
        self.index_version = Gauge("trademark_index_version_info", "Loaded index version "
                                   "(value 1)", ["version"], registry=r)

    def set_index(self, marks: int, version: str) -> None:
        self.index_marks.set(marks)
        self.index_version.clear()
        self.index_version.labels(version=version).set(1)

    def count(self, method: str, code: grpc.StatusCode, n: int = 1) -> None:
        self.requests.labels(method=method, code=code.name).inc(n)

    @contextmanager
    def observe(self, method: str, context):
        """Time an RPC and count it under the status it ended with."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.latency.labels(method=method).observe(time.perf_counter() - t0)
            code = context.code() if hasattr(context, "code") else None
            self.count(method, code or grpc.StatusCode.OK)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port
