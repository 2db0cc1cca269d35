"""The engine's records as Prometheus metrics, on a registry the app owns."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from penstock.engine.observer import RequestRecord, StateRecord, StepRecord

# Buckets for LLM latencies: a millisecond to a few minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class EngineMetrics:
    """One deployment's engine metrics; implements engine.observer.EngineObserver."""

    def __init__(self, registry: CollectorRegistry, deployment: str) -> None:
        labels = {"deployment": deployment}
        seconds = lambda name, doc: Histogram(  # noqa: E731
            name, doc, ["deployment"], buckets=LATENCY_BUCKETS, registry=registry
        ).labels(**labels)
        self.ttft = seconds("penstock_time_to_first_token_seconds", "Arrival to first token")
        self.itl = seconds("penstock_inter_token_latency_seconds", "Time between two tokens of a sequence")
        self.queue = seconds("penstock_engine_queue_seconds", "Arrival to first scheduled")
        self.prefill = seconds("penstock_prefill_seconds", "First scheduled to first token")
        self.decode = seconds("penstock_decode_seconds", "First token to last token")
        self.step = seconds("penstock_engine_step_seconds", "One engine step")
        self.batch = Histogram(
            "penstock_engine_step_batch_size",
            "Sequences per step",
            ["deployment"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        ).labels(**labels)
        self.tokens = Counter(
            "penstock_engine_tokens_total", "Tokens through the model", ["deployment", "phase"], registry=registry
        )
        self.output = Counter(
            "penstock_engine_output_tokens_total", "Generated tokens", ["deployment"], registry=registry
        ).labels(**labels)
        self.preemptions = Counter(
            "penstock_engine_preemptions_total", "Sequences preempted for recompute", ["deployment"], registry=registry
        ).labels(**labels)
        self.prefix_queried = Counter(
            "penstock_prefix_cache_queried_tokens_total", "Prompt tokens looked up", ["deployment"], registry=registry
        ).labels(**labels)
        self.prefix_hits = Counter(
            "penstock_prefix_cache_hit_tokens_total",
            "Prompt tokens found in the cache",
            ["deployment"],
            registry=registry,
        ).labels(**labels)
        gauge = lambda name, doc: Gauge(name, doc, ["deployment"], registry=registry).labels(**labels)  # noqa: E731
        self.kv_usage = gauge("penstock_kv_cache_usage_ratio", "Fraction of KV cache blocks in use")
        self.running = gauge("penstock_engine_running_sequences", "Sequences being generated")
        self.waiting = gauge("penstock_engine_waiting_sequences", "Sequences queued")
        self._deployment = deployment

    def on_step(self, record: StepRecord) -> None:
        self.step.observe(record.seconds)
        self.batch.observe(record.batch_size)
        self.tokens.labels(self._deployment, "prefill").inc(record.prefill_tokens)
        self.tokens.labels(self._deployment, "decode").inc(record.decode_tokens)
        self.preemptions.inc(record.preemptions)
        self.prefix_queried.inc(record.prefix_queried_tokens)
        self.prefix_hits.inc(record.prefix_hit_tokens)

    def on_state(self, record: StateRecord) -> None:
        self.kv_usage.set(record.kv_usage)
        self.running.set(record.running)
        self.waiting.set(record.waiting)

    def on_token_gap(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def on_finish(self, record: RequestRecord) -> None:
        self.ttft.observe(record.ttft_seconds)
        self.queue.observe(record.queue_seconds)
        self.prefill.observe(record.prefill_seconds)
        self.decode.observe(record.decode_seconds)
        self.output.inc(record.output_tokens)
