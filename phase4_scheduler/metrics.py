"""Prometheus metrics of the server (its own registry, so several servers in one process never clash)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class ServerMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.queue = Gauge("titaninfer_queue_length", "requests waiting to be scheduled", registry=r)
        self.running = Gauge("titaninfer_running_requests", "requests in the running batch", registry=r)
        self.kv_usage = Gauge("titaninfer_kv_cache_usage_ratio", "fraction of KV blocks in use", registry=r)
        self.tokens_per_s = Gauge("titaninfer_generation_tokens_per_second", "tokens sampled per second, last step",
                                  registry=r)
        self.generated = Counter("titaninfer_generation_tokens", "tokens sampled", registry=r)
        self.requests = Counter("titaninfer_requests", "finished requests by reason", ["finish_reason"], registry=r)
        self.rejected = Counter("titaninfer_rejected_requests", "requests refused with 429", registry=r)
        self.ttft = Histogram("titaninfer_time_to_first_token_seconds", "arrival to first token", registry=r,
                              buckets=LATENCY_BUCKETS)
        self.tpot = Histogram("titaninfer_time_per_output_token_seconds", "mean gap between a request's tokens",
                              registry=r, buckets=LATENCY_BUCKETS)

    def on_step(self, engine, seconds: float) -> None:
        self.record_step(engine_stats(engine), engine.last_step.num_sampled if engine.last_step else 0, seconds)

    def record_step(self, stats: tuple[int, int, float], sampled: int, seconds: float) -> None:
        """A step's figures: ``stats`` = (waiting, running, KV usage) after it, ``sampled`` tokens, its seconds
        (an API server process gets them from the engine process, ``api_servers``)."""
        self.queue.set(stats[0])
        self.running.set(stats[1])
        self.kv_usage.set(stats[2])
        self.generated.inc(sampled)
        self.tokens_per_s.set(sampled / seconds if seconds > 0 else 0.0)

    def on_finish(self, request) -> None:
        self.requests.labels(finish_reason=(request.finish_reason or "unknown").split(":")[0]).inc()
        if request.first_token_time is not None:
            self.ttft.observe(request.first_token_time - request.arrival_time)
            end = request.finish_time or time.perf_counter()
            if len(request.output_ids) > 1:
                self.tpot.observe((end - request.first_token_time) / (len(request.output_ids) - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def engine_stats(engine) -> tuple[int, int, float]:
    """(waiting, running, KV usage) of a ``BatchingEngine`` now (read on its own thread)."""
    sched = engine.scheduler
    return sched.num_waiting, sched.num_running, sched.kv_usage()
