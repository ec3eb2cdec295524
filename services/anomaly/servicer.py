"""maas.v1.Anomaly over the core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from google.protobuf import timestamp_pb2

from maas.v1 import anomaly_pb2, anomaly_pb2_grpc
from services.anomaly.alerts import KINDS, Alert, AlertQuery, Severity
from services.anomaly.core import AnomalyCore
from services.anomaly.events import RequestEvent
from services.common.errors import InvalidArgumentError

Context = grpc.aio.ServicerContext[Any, Any]
log = structlog.get_logger(__name__)

SEVERITIES = {
    Severity.INFO: anomaly_pb2.SEVERITY_INFO,
    Severity.WARNING: anomaly_pb2.SEVERITY_WARNING,
    Severity.CRITICAL: anomaly_pb2.SEVERITY_CRITICAL,
}


# A budget's QuotaFailure subject: "budget:key:<128-character id>:monthly" at most.
MAX_BUDGET_BYTES = 256


def _check_budget_fields(message: anomaly_pb2.Event) -> None:
    """INVALID_ARGUMENT naming the first bad field of a budget threshold."""
    if len(message.budget.encode()) > MAX_BUDGET_BYTES:
        raise InvalidArgumentError("budget", f"must be at most {MAX_BUDGET_BYTES} bytes")
    for field, value in (
        ("spent_micros", message.spent_micros),
        ("threshold_micros", message.threshold_micros),
    ):
        if value < 0:
            raise InvalidArgumentError(field, "must not be negative")


def event_from_proto(message: anomaly_pb2.Event) -> RequestEvent:
    _check_budget_fields(message)
    return RequestEvent(
        kind=anomaly_pb2.EventKind.Name(message.kind),
        time=message.time.ToDatetime(tzinfo=UTC),
        request_id=message.request_id,
        tenant_id=message.tenant_id,
        key_id=message.key_id,
        model=message.model,
        replica=message.replica,
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        time_to_first_token_s=message.time_to_first_token_s,
        duration_s=message.duration_s,
        status_code=message.status_code,
        source=message.source,
        budget=message.budget,
        spent_micros=message.spent_micros,
        threshold_micros=message.threshold_micros,
    )


def _timestamp(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def alert_to_proto(alert: Alert) -> anomaly_pb2.Alert:
    return anomaly_pb2.Alert(
        alert_id=alert.alert_id,
        kind=alert.kind,
        series=alert.series,
        first_seen=_timestamp(alert.first_seen),
        last_seen=_timestamp(alert.last_seen),
        severity=SEVERITIES[alert.severity],
        score=alert.score,
        observed=alert.observed,
        expected=alert.expected,
        count=alert.count,
        tenant_id=alert.tenant_id,
        detail=alert.detail,
        actions=[
            anomaly_pb2.PolicyAction(
                action=a.verb,
                target=a.target,
                time=_timestamp(a.at),
                expire_time=_timestamp(a.expires_at),
                reference=a.reference,
                error=a.error,
            )
            for a in alert.actions
        ],
    )


def query_from_proto(
    request: anomaly_pb2.ListAlertsRequest | anomaly_pb2.WatchAlertsRequest, limit: int = 0
) -> AlertQuery:
    if request.kind and request.kind not in KINDS:
        raise InvalidArgumentError("kind", f"unknown alert kind; one of {', '.join(sorted(KINDS))}")
    if request.min_severity not in anomaly_pb2.Severity.values():
        raise InvalidArgumentError("min_severity", "unknown severity")
    return AlertQuery(
        tenant_id=request.tenant_id,
        kind=request.kind,
        since=request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None,
        min_severity=Severity(max(request.min_severity, Severity.INFO)),
        limit=limit,
    )


class AnomalyServicer(anomaly_pb2_grpc.AnomalyServicer):
    def __init__(self, core: AnomalyCore) -> None:
        self._core = core

    async def Report(
        self, request_iterator: AsyncIterator[anomaly_pb2.Event], context: Context
    ) -> anomaly_pb2.ReportResponse:
        reply = anomaly_pb2.ReportResponse()
        async for event in request_iterator:
            try:
                parsed = event_from_proto(event)
            except InvalidArgumentError as err:
                # One sender's bad event must not cost the stream's other events.
                log.warning("event rejected", field=err.field, reason=err.description)
                reply.rejected += 1
                reply.first_rejected_field = reply.first_rejected_field or err.field
                continue
            self._core.ingest(parsed)
            reply.accepted += 1
        return reply

    async def ListAlerts(
        self, request: anomaly_pb2.ListAlertsRequest, context: Context
    ) -> anomaly_pb2.ListAlertsResponse:
        query = query_from_proto(request, limit=request.limit)
        return anomaly_pb2.ListAlertsResponse(
            alerts=[alert_to_proto(a) for a in self._core.alerts(query)]
        )

    async def WatchAlerts(
        self, request: anomaly_pb2.WatchAlertsRequest, context: Context
    ) -> AsyncIterator[anomaly_pb2.Alert]:
        query = query_from_proto(request)
        # Subscribed before the replay is read, so nothing falls between the two.
        with self._core.watch(query) as watcher:
            if query.since is not None:
                for alert in reversed(self._core.alerts(query)):
                    yield alert_to_proto(alert)
            async for alert in watcher:
                yield alert_to_proto(alert)

    async def GetEventStats(
        self, request: anomaly_pb2.GetEventStatsRequest, context: Context
    ) -> anomaly_pb2.EventStats:
        stats = self._core.stats()
        return anomaly_pb2.EventStats(
            total=stats.total,
            by_kind=dict(stats.by_kind),
            by_tenant=dict(stats.by_tenant),
            completion_tokens_by_tenant=dict(stats.completion_tokens_by_tenant),
            by_replica=dict(stats.by_replica),
            series_tracked=stats.series_tracked,
            series_evicted=stats.series_evicted,
            watch_dropped=stats.watch_dropped,
        )
