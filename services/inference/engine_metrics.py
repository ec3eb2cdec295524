"""vLLM's own `vllm:*` metrics (queue, running requests, KV cache use, token
and latency histograms) on the inference service's Prometheus endpoint. vLLM
records them in prometheus_client's process-global registry, which no
endpoint serves: each service's endpoint has a registry of its own
(observability.telemetry), so this collector forwards vLLM's families there."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

ENGINE_METRIC_PREFIX = "vllm:"


class EngineMetrics(Collector):
    """The `vllm:` families of `source` (the process-global registry) at
    each scrape; nothing while no vLLM engine runs in this process (the sim
    engine, or before the model has loaded)."""

    def __init__(self, source: CollectorRegistry = REGISTRY) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        # The names appear only once the engine has loaded: declared as none,
        # so registering checks no names now.
        return []

    def collect(self) -> Iterable[Metric]:
        return [m for m in self._source.collect() if m.name.startswith(ENGINE_METRIC_PREFIX)]
