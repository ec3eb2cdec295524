"""Event ingestion. Every event is counted here and will be fanned out to the
streaming detectors; this skeleton has none yet, so it raises no alerts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class RequestEvent:
    kind: str
    time: datetime
    request_id: str
    tenant_id: str
    key_id: str
    model: str
    replica: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    duration_s: float
    status_code: str
    source: str


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    kind: str
    series: str
    first_seen: datetime
    last_seen: datetime


@dataclass
class EventStats:
    total: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_tenant: Counter[str] = field(default_factory=Counter)
    completion_tokens_by_tenant: Counter[str] = field(default_factory=Counter)


class AnomalyCore:
    def __init__(self) -> None:
        self._stats = EventStats()
        self._alerts: list[Alert] = []

    def ingest(self, event: RequestEvent) -> None:
        stats = self._stats
        stats.total += 1
        stats.by_kind[event.kind] += 1
        if event.tenant_id:
            stats.by_tenant[event.tenant_id] += 1
            stats.completion_tokens_by_tenant[event.tenant_id] += event.completion_tokens

    def stats(self) -> EventStats:
        return self._stats

    def alerts(self, tenant_id: str = "") -> list[Alert]:
        """Alerts raised by the detectors, newest first (none until detectors exist)."""
        matching = [a for a in self._alerts if not tenant_id or a.series == f"tenant:{tenant_id}"]
        return sorted(matching, key=lambda a: a.last_seen, reverse=True)
