"""Protobuf messages turned into what the templates show."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from maas.v1 import anomaly_pb2, auth_pb2, billing_pb2, router_pb2, usage_pb2
from services.console.money import amount_number, amount_text


def when(stamp: Timestamp, present: bool = True) -> str:
    if not present:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def key_row(key: auth_pb2.ApiKey) -> dict[str, object]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "scopes": ", ".join(key.scopes),
        "created": when(key.create_time),
        "expires": when(key.expire_time, key.HasField("expire_time")) or "never",
        "revoked": when(key.revoke_time, key.HasField("revoke_time")),
    }


def tenant_row(tenant: auth_pb2.Tenant) -> dict[str, object]:
    plan = tenant.plan

    def limit(value: int) -> str:
        return f"{value:,}" if value else "unlimited"

    return {
        "tenant_id": tenant.tenant_id,
        "name": tenant.name,
        "priority": auth_pb2.Priority.Name(tenant.priority).removeprefix("PRIORITY_").lower(),
        "created": when(tenant.create_time),
        "rpm": limit(plan.requests_per_minute),
        "tpm": limit(plan.tokens_per_minute),
        "concurrent": limit(plan.max_concurrent_requests),
        "monthly_tokens": limit(plan.monthly_token_budget),
        "models": ", ".join(plan.allowed_models) or "all",
    }


def budget_row(budget: billing_pb2.Budget, currency: str) -> dict[str, object]:
    def limit(micros: int) -> str:
        return amount_text(micros, currency) if micros else "none"

    soft = budget.soft_threshold_percent
    return {
        "tenant_id": budget.tenant_id,
        "key_id": budget.key_id,
        "owner": f"key {budget.key_id}" if budget.key_id else "the tenant",
        "monthly_limit": limit(budget.monthly_limit_micros),
        "month_spent": amount_text(budget.month_spent_micros, currency),
        "month_spent_micros": budget.month_spent_micros,
        "total_limit": limit(budget.total_limit_micros),
        "total_spent": amount_text(budget.total_spent_micros, currency),
        "soft": f"{soft}%" if soft else "no alert",
        "updated": when(budget.update_time),
    }


def replica_row(replica: router_pb2.Replica) -> dict[str, object]:
    return {
        "address": replica.address,
        "model": replica.model.name,
        "state": router_pb2.ReplicaState.Name(replica.state)
        .removeprefix("REPLICA_STATE_")
        .lower()
        .replace("_", " "),
        "in_flight": replica.in_flight,
        "limit": replica.concurrency_limit,
        "running": replica.load.running,
        "waiting": replica.load.waiting,
        "kv_cache": f"{replica.load.kv_cache_usage:.0%}",
        "ttft": f"{replica.ttft_s * 1000:.0f} ms" if replica.ttft_s else "-",
        "ejected_for": f"{replica.ejected_for_s:.0f} s" if replica.ejected_for_s else "",
    }


def queue_rows(stats: router_pb2.QueueStats) -> list[dict[str, object]]:
    return [
        {
            "tenant_id": depth.tenant_id,
            "priority": auth_pb2.Priority.Name(depth.priority).removeprefix("PRIORITY_").lower(),
            "waiting": depth.waiting,
            "tokens": depth.tokens,
        }
        for depth in stats.depths
    ]


# How people name a budget's period (services/auth/budgets.py's Period).
PERIODS = {"monthly": "Monthly", "total": "Lifetime"}
BUDGET_ALERT = "budget_threshold"


def budget_alert_title(alert: anomaly_pb2.Alert) -> str:
    """Which budget crossed its soft threshold, and by how much: from the
    series ("<tenant>/budget:tenant:monthly", "<tenant>/budget:key:<id>:total")
    and the spend and threshold the detector observed."""
    subject = alert.series.partition("/")[2].split(":")
    if len(subject) < 3 or subject[0] != "budget":
        return alert.detail
    period = PERIODS.get(subject[-1], subject[-1])
    owner = f"key {subject[2]}" if subject[1] == "key" else "the tenant"
    # The detector reports currency units as doubles; back to exact micro-units
    # (exact for any amount under 2**53 micro-units, far past any budget).
    spent = amount_text(round(alert.observed * 1_000_000))
    threshold = amount_text(round(alert.expected * 1_000_000))
    return f"{period} budget of {owner}: spent {spent}, past its soft threshold of {threshold}"


def alert_row(alert: anomaly_pb2.Alert) -> dict[str, object]:
    return {
        "alert_id": alert.alert_id,
        "kind": alert.kind,
        "title": budget_alert_title(alert) if alert.kind == BUDGET_ALERT else "",
        "series": alert.series,
        "severity": anomaly_pb2.Severity.Name(alert.severity).removeprefix("SEVERITY_").lower(),
        "last_seen": when(alert.last_seen),
        "count": alert.count,
        "detail": alert.detail,
        "actions": ", ".join(f"{a.action} {a.target}" for a in alert.actions),
    }


@dataclass(frozen=True)
class Span:
    """A usage chart's range and step."""

    grouping: usage_pb2.UsageGrouping
    step: timedelta
    buckets: int
    label_format: str


SPANS = {
    # The last day by hour, and the last month by day: what "over time" means to a person.
    "hour": Span(usage_pb2.USAGE_GROUPING_HOUR, timedelta(hours=1), 24, "%m-%d %H:00"),
    "day": Span(usage_pb2.USAGE_GROUPING_DAY, timedelta(days=1), 30, "%Y-%m-%d"),
}


def span_start(span: Span, now: datetime) -> datetime:
    if span.step == timedelta(days=1):
        floor = now.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        floor = now.replace(minute=0, second=0, microsecond=0)
    return floor - span.step * (span.buckets - 1)


def _by_start(response: usage_pb2.GetUsageResponse) -> dict[datetime, usage_pb2.UsageBucket]:
    return {
        datetime.fromisoformat(bucket.key.replace("Z", "+00:00")): bucket
        for bucket in response.buckets
    }


def usage_chart(
    span: Span, start: datetime, response: usage_pb2.GetUsageResponse
) -> dict[str, object]:
    """Every bucket of the range, empty ones as zeros, for Chart.js."""
    by_start = _by_start(response)
    labels: list[str] = []
    prompt: list[int] = []
    completion: list[int] = []
    requests: list[int] = []
    for i in range(span.buckets):
        at = start + span.step * i
        bucket = by_start.get(at)
        labels.append(at.strftime(span.label_format))
        prompt.append(bucket.prompt_tokens if bucket else 0)
        completion.append(bucket.completion_tokens if bucket else 0)
        requests.append(bucket.requests if bucket else 0)
    return {
        "labels": labels,
        "datasets": [
            {"label": "prompt tokens", "data": prompt, "stack": "tokens"},
            {"label": "completion tokens", "data": completion, "stack": "tokens"},
        ],
        "requests": requests,
    }


def spend_chart(
    span: Span, start: datetime, response: usage_pb2.GetUsageResponse
) -> dict[str, object]:
    """Spend per bucket of the range in currency units (exact decimal
    strings), empty ones as zeros, for Chart.js; `unpriced` names the buckets
    with usage no price covered (billed 0 there, never silently free)."""
    by_start = _by_start(response)
    labels: list[str] = []
    spend: list[str] = []
    unpriced: list[str] = []
    for i in range(span.buckets):
        at = start + span.step * i
        bucket = by_start.get(at)
        labels.append(at.strftime(span.label_format))
        spend.append(amount_number(bucket.cost_micros if bucket else 0))
        if bucket is not None and bucket.unpriced:
            unpriced.append(labels[-1])
    currency = response.summary.currency
    return {
        "labels": labels,
        "datasets": [
            {"label": f"spend ({currency})" if currency else "spend", "data": spend},
        ],
        "unpriced": unpriced,
        "money": True,
    }
