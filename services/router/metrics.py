"""The router's metrics (OpenTelemetry instruments): queue depth per tenant
and priority, queue wait, sheds by reason, per-replica in-flight and limit,
retries, and the time the router itself added before a replica was called."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from services.router.dispatcher import Dispatcher
from services.router.fair_queue import CLASSES
from services.router.replicas import ReplicaSet

CLASS_NAMES = dict(zip(CLASSES, ("interactive", "default", "batch"), strict=True))


class RouterMetrics:
    def __init__(self, meter: Meter, dispatcher: Dispatcher, replicas: ReplicaSet) -> None:
        self._dispatcher = dispatcher
        self._replicas = replicas
        self.queue_wait = meter.create_histogram(
            "maas.router.queue_wait", unit="s", description="Time a request waited for a replica"
        )
        self.added_time = meter.create_histogram(
            "maas.router.added_time",
            unit="s",
            description="Time from the router receiving a request to calling a replica",
        )
        self.shed = meter.create_counter(
            "maas.router.shed", unit="{request}", description="Requests refused, by reason"
        )
        self.retries = meter.create_counter(
            "maas.router.retries",
            unit="{request}",
            description="Requests retried on another replica before their first token",
        )
        meter.create_observable_gauge(
            "maas.router.queue_depth",
            [self._queue_depth],
            unit="{request}",
            description="Requests waiting, by tenant and priority",
        )
        meter.create_observable_gauge(
            "maas.router.replica_in_flight",
            [self._in_flight],
            unit="{request}",
            description="Requests running on each replica",
        )
        meter.create_observable_gauge(
            "maas.router.replica_limit",
            [self._limit],
            unit="{request}",
            description="Each replica's adaptive concurrency limit",
        )
        meter.create_observable_gauge(
            "maas.router.replica_probing",
            [self._probing],
            description="1 while a failing replica, the last of its model, is probed"
            " one request at a time instead of ejected",
        )

    def _probing(self, options: CallbackOptions) -> Iterable[Observation]:
        for replica in self._replicas.replicas:
            yield Observation(int(replica.probing), {"replica": replica.address})

    def _queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        for model, queue in self._dispatcher.queues.items():
            for (tenant, priority), (waiting, _) in queue.depths().items():
                yield Observation(
                    waiting,
                    {"model": model, "tenant": tenant, "priority": CLASS_NAMES[priority]},
                )

    def _in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        for replica in self._replicas.replicas:
            yield Observation(replica.limiter.in_flight, {"replica": replica.address})

    def _limit(self, options: CallbackOptions) -> Iterable[Observation]:
        for replica in self._replicas.replicas:
            yield Observation(replica.limiter.limit, {"replica": replica.address})
