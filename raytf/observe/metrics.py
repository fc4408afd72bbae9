"""raytf's own metrics, exported through Ray's metrics agent.

They reach each node's Prometheus endpoint (`ray_` prefix added by Ray) and the dashboard's
Metrics view (with Prometheus and Grafana set up as Ray documents; import
`cluster-configs/grafana-raytf.json` next to Ray's own dashboards). Every metric carries the tags
`run` (run name), `role` (`worker` or `ps`) and `index`.
"""

from __future__ import annotations

import time

FLUSH_SECONDS = 0.5
TAGS = ("run", "role", "index")
LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
STALENESS_BUCKETS = [0.5, 1.5, 2.5, 4.5, 8.5, 16.5, 32.5]

# name: (kind, role that records it, description) — the README's metrics table is this table.
METRICS = {
    "raytf_step": ("gauge", "worker", "Gradient steps the worker has completed."),
    "raytf_loss": ("gauge", "worker", "Training loss of the worker's latest batch."),
    "raytf_samples_per_second": ("gauge", "worker", "The worker's training rate over its last 20 steps."),
    "raytf_push_seconds": ("histogram", "worker", "Time from handing a gradient to the servers until they replied."),
    "raytf_pull_seconds": ("histogram", "worker", "Time to load freshly published parameters into the replica."),
    "raytf_bytes_exchanged": ("counter", "worker", "Bytes of gradients sent and parameters received."),
    "raytf_sparse_rows": ("counter", "worker", "Rows of sparse embedding tables sent (gradients) and received (parameters)."),
    "raytf_staleness": ("histogram", "ps", "Versions behind the server's parameters of each applied gradient."),
    "raytf_apply_seconds": ("histogram", "ps", "Time of one fused optimizer update of the server's shard."),
    "raytf_gradients_dropped": ("counter", "ps", "Gradients that came too late for their round and were not applied (backup workers)."),
    "raytf_dynamic_rows_live": ("gauge", "ps", "Rows the server holds of its DynamicEmbedding tables."),
    "raytf_dynamic_rows_created": ("gauge", "ps", "Rows of DynamicEmbedding tables this server process created (admitted keys' first touch)."),
    "raytf_dynamic_rows_evicted": ("gauge", "ps", "Rows of DynamicEmbedding tables this server process evicted (ttl or capacity)."),
    "raytf_restarts": ("counter", "worker, ps", "Times the actor was restarted after a failure."),
}


class ActorMetrics:
    """The metrics one actor records, with its tags preset."""

    def __init__(self, run: str, role: str, index: int) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = {"run": run, "role": role, "index": str(index)}

        def make(name: str):
            kind, _, description = METRICS[name]
            if kind == "gauge":
                metric = Gauge(name, description=description, tag_keys=TAGS)
            elif kind == "counter":
                metric = Counter(name, description=description, tag_keys=TAGS)
            else:
                buckets = STALENESS_BUCKETS if name == "raytf_staleness" else LATENCY_BUCKETS
                metric = Histogram(name, description=description, boundaries=buckets, tag_keys=TAGS)
            metric.set_default_tags(tags)
            return metric

        self._metrics = {name: make(name) for name, (_, roles, _) in METRICS.items() if role in roles}
        import warnings

        import ray

        with warnings.catch_warnings():  # Ray's own property uses a deprecated one inside (Ray 2.60)
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            self._metrics["raytf_restarts"].inc()

        # Gauges and counters are handed to Ray at most every FLUSH_SECONDS (Ray exports every few
        # seconds anyway; a call costs tens of microseconds, a sparse step is a few milliseconds).
        self._gauges: dict[str, float] = {}
        self._counts: dict[str, float] = {}
        self._due = 0.0

    def set(self, name: str, value: float) -> None:
        self._gauges[name] = value
        self._flush_if_due()

    def observe(self, name: str, value: float) -> None:
        self._metrics[name].observe(value)

    def inc(self, name: str, value: float = 1.0) -> None:
        if value:  # Ray's Counter refuses 0 (a skipped non-finite push sends nothing)
            self._counts[name] = self._counts.get(name, 0.0) + value
            self._flush_if_due()

    def _flush_if_due(self) -> None:
        if time.monotonic() >= self._due:
            self.flush()

    def flush(self) -> None:
        """Hand what was set and counted since the last flush to Ray."""
        for name, value in self._gauges.items():
            self._metrics[name].set(value)
        for name, value in self._counts.items():
            self._metrics[name].inc(value)
        self._gauges.clear()
        self._counts.clear()
        self._due = time.monotonic() + FLUSH_SECONDS
