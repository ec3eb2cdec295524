"""Event ingestion: counts every event, runs the streaming detectors over it in
event time, and turns what they find into alerts for listing and watching."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from services.anomaly.alerts import ActionTaken, Alert, AlertBook, AlertQuery
from services.anomaly.detectors.auth_failures import AuthFailureDetector
from services.anomaly.detectors.base import Detector, Finding
from services.anomaly.detectors.budgets import BudgetThresholdDetector
from services.anomaly.detectors.errors import ErrorBurstDetector
from services.anomaly.detectors.latency import LatencyDetector
from services.anomaly.detectors.mix import TrafficMixDetector
from services.anomaly.detectors.rate import RateDetector
from services.anomaly.events import RequestEvent
from services.anomaly.settings import AnomalySettings
from services.anomaly.watch import AlertHub, Watcher

MAX_REPLICAS = 1024
OTHER_REPLICAS = "(others)"


@dataclass
class EventStats:
    total: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_tenant: Counter[str] = field(default_factory=Counter)
    completion_tokens_by_tenant: Counter[str] = field(default_factory=Counter)
    by_replica: Counter[str] = field(default_factory=Counter)
    series_tracked: int = 0
    series_evicted: int = 0
    watch_dropped: int = 0


class AnomalyCore:
    def __init__(self, settings: AnomalySettings | None = None) -> None:
        s = settings or AnomalySettings()
        self._bucket_s = s.bucket_s
        idle = max(1, math.ceil(s.idle_s / s.bucket_s))
        b, cap = s.bucket_s, s.max_series
        self.detectors: dict[str, Detector] = {
            "rate": RateDetector(s.rate, bucket_s=b, max_series=cap, idle_buckets=idle),
            "errors": ErrorBurstDetector(s.errors, bucket_s=b, max_series=cap, idle_buckets=idle),
            "latency": LatencyDetector(s.latency, bucket_s=b, max_series=cap, idle_buckets=idle),
            "auth_failures": AuthFailureDetector(
                s.auth_failures, bucket_s=b, max_series=cap, idle_buckets=idle
            ),
            "mix": TrafficMixDetector(s.mix, bucket_s=b, idle_buckets=idle),
            "budgets": BudgetThresholdDetector(),
        }
        self._hub = AlertHub(s.alerts.watch_queue)
        self._listeners: list[Callable[[Alert], None]] = [self._hub.publish]
        self._book = AlertBook(s.alerts, self._changed)
        self._stats = EventStats()
        self._bucket = -1

    def ingest(self, event: RequestEvent) -> list[Alert]:
        """Counts and examines one event; the alerts it opened or updated."""
        stats = self._stats
        stats.total += 1
        stats.by_kind[event.kind] += 1
        if event.tenant_id:
            stats.by_tenant[event.tenant_id] += 1
            stats.completion_tokens_by_tenant[event.tenant_id] += event.completion_tokens
        if event.replica:
            # Replicas are few; a cap keeps a misconfigured sender from growing this.
            known = event.replica in stats.by_replica or len(stats.by_replica) < MAX_REPLICAS
            stats.by_replica[event.replica if known else OTHER_REPLICAS] += 1
        at = event.time.timestamp()
        bucket = int(at // self._bucket_s)
        findings: list[Finding] = []
        if bucket > self._bucket:
            if self._bucket >= 0:
                for detector in self.detectors.values():
                    findings.extend(detector.advance(bucket))
            self._bucket = bucket
        else:
            # Late events count in the current bucket: detectors only move forward.
            bucket = self._bucket
        for detector in self.detectors.values():
            findings.extend(detector.observe(event, at, bucket))
        return [self._book.record(f) for f in findings]

    def on_alert(self, listener: Callable[[Alert], None]) -> None:
        """Calls `listener` with every alert opened or updated (on the ingest path: be quick)."""
        self._listeners.append(listener)

    def annotate(self, alert_id: str, taken: ActionTaken) -> None:
        """Records on the alert what the policy did about it."""
        self._book.annotate(alert_id, taken)

    def _changed(self, alert: Alert) -> None:
        for listener in self._listeners:
            listener(alert)

    def stats(self) -> EventStats:
        stats = self._stats
        stats.series_tracked = sum(d.tracked() for d in self.detectors.values())
        stats.series_evicted = sum(d.evicted() for d in self.detectors.values())
        stats.watch_dropped = self._hub.dropped
        return stats

    def alerts(self, query: AlertQuery | None = None) -> list[Alert]:
        """Alerts raised by the detectors, most recently seen first."""
        return self._book.query(query or AlertQuery())

    @contextmanager
    def watch(self, query: AlertQuery) -> Iterator[Watcher]:
        """Receives every alert opened or updated (and matching) while inside."""
        with self._hub.watch(query) as watcher:
            yield watcher

    @property
    def watchers(self) -> int:
        return self._hub.watchers
