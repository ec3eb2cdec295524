"""Alerts: findings merged while an anomaly lasts, kept (bounded) for listing,
and handed to watchers."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from services.anomaly.detectors.base import Finding
from services.anomaly.settings import AlertSettings

KINDS = frozenset(
    {
        "request_rate_spike",
        "request_rate_shift",
        "token_rate_spike",
        "token_rate_shift",
        "error_burst",
        "ttft_regression",
        "token_latency_regression",
        "auth_failure_burst",
        "traffic_mix",
        "budget_threshold",
    }
)


class Severity(IntEnum):
    """Same numbers as maas.v1.Severity."""

    INFO = 1
    WARNING = 2
    CRITICAL = 3


@dataclass(frozen=True, slots=True)
class ActionTaken:
    """What the policy did about an alert (see policy.py)."""

    verb: str
    target: str
    at: datetime
    expires_at: datetime
    reference: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    kind: str
    series: str
    tenant_id: str
    severity: Severity
    score: float
    observed: float
    expected: float
    count: int
    first_seen: datetime
    last_seen: datetime
    detail: str
    actions: tuple[ActionTaken, ...] = ()


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Which alerts to list or watch; empty fields match everything."""

    tenant_id: str = ""
    kind: str = ""
    since: datetime | None = None
    min_severity: Severity = Severity.INFO
    limit: int = 0

    def matches(self, alert: Alert) -> bool:
        return (
            (not self.tenant_id or alert.tenant_id == self.tenant_id)
            and (not self.kind or alert.kind == self.kind)
            and (self.since is None or alert.last_seen >= self.since)
            and alert.severity >= self.min_severity
        )


class AlertBook:
    """Turns findings into alerts: a finding of the same kind and series within
    the merge window of that alert's last one updates it (last_seen, count,
    highest score and severity, latest observed/expected); otherwise it opens
    a new alert. Every new or updated alert goes to `on_change`."""

    def __init__(self, settings: AlertSettings, on_change: Callable[[Alert], None]) -> None:
        self._s = settings
        self._merge_window = timedelta(seconds=settings.merge_window_s)
        self._on_change = on_change
        self._alerts: OrderedDict[str, Alert] = OrderedDict()
        self._latest: dict[tuple[str, str], str] = {}

    def __len__(self) -> int:
        return len(self._alerts)

    def record(self, finding: Finding) -> Alert:
        at = datetime.fromtimestamp(finding.at, UTC)
        severity = self._severity(finding)
        key = (finding.kind, finding.series)
        current = self._alerts.get(self._latest.get(key, ""))
        if current is not None and at <= current.last_seen + self._merge_window:
            alert = replace(
                current,
                severity=max(current.severity, severity),
                score=max(current.score, finding.score),
                observed=finding.observed,
                expected=finding.expected,
                count=current.count + 1,
                last_seen=max(current.last_seen, at),
                detail=finding.detail,
            )
        else:
            alert = Alert(
                alert_id=uuid.uuid4().hex[:16],
                kind=finding.kind,
                series=finding.series,
                tenant_id=finding.tenant_id,
                severity=severity,
                score=finding.score,
                observed=finding.observed,
                expected=finding.expected,
                count=1,
                first_seen=at,
                last_seen=at,
                detail=finding.detail,
            )
            self._latest[key] = alert.alert_id
            if len(self._alerts) >= self._s.max_alerts:
                _, oldest = self._alerts.popitem(last=False)
                if self._latest.get((oldest.kind, oldest.series)) == oldest.alert_id:
                    del self._latest[(oldest.kind, oldest.series)]
        self._alerts[alert.alert_id] = alert
        self._on_change(alert)
        return alert

    def annotate(self, alert_id: str, taken: ActionTaken) -> Alert | None:
        """Adds what the policy did to the alert and tells watchers."""
        current = self._alerts.get(alert_id)
        if current is None:
            return None  # evicted meanwhile
        alert = replace(current, actions=(*current.actions, taken))
        self._alerts[alert_id] = alert
        self._on_change(alert)
        return alert

    def query(self, query: AlertQuery) -> list[Alert]:
        """Matching alerts, most recently seen first."""
        found = [a for a in self._alerts.values() if query.matches(a)]
        found.sort(key=lambda a: a.last_seen, reverse=True)
        limit = min(query.limit or self._s.max_list, self._s.max_list)
        return found[:limit]

    def _severity(self, finding: Finding) -> Severity:
        if finding.expected > 0 and finding.observed >= self._s.critical_ratio * finding.expected:
            return Severity.CRITICAL
        return Severity.WARNING
