"""maas.v1.Anomaly over the core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from maas.v1 import anomaly_pb2, anomaly_pb2_grpc
from services.anomaly.core import AnomalyCore, RequestEvent

Context = grpc.aio.ServicerContext[Any, Any]


def event_from_proto(message: anomaly_pb2.Event) -> RequestEvent:
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
    )


def _timestamp(at: Any) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


class AnomalyServicer(anomaly_pb2_grpc.AnomalyServicer):
    def __init__(self, core: AnomalyCore) -> None:
        self._core = core

    async def Report(
        self, request_iterator: AsyncIterator[anomaly_pb2.Event], context: Context
    ) -> anomaly_pb2.ReportResponse:
        accepted = 0
        async for event in request_iterator:
            self._core.ingest(event_from_proto(event))
            accepted += 1
        return anomaly_pb2.ReportResponse(accepted=accepted)

    async def ListAlerts(
        self, request: anomaly_pb2.ListAlertsRequest, context: Context
    ) -> anomaly_pb2.ListAlertsResponse:
        return anomaly_pb2.ListAlertsResponse(
            alerts=[
                anomaly_pb2.Alert(
                    alert_id=a.alert_id,
                    kind=a.kind,
                    series=a.series,
                    first_seen=_timestamp(a.first_seen),
                    last_seen=_timestamp(a.last_seen),
                )
                for a in self._core.alerts(request.tenant_id)
            ]
        )

    async def GetEventStats(
        self, request: anomaly_pb2.GetEventStatsRequest, context: Context
    ) -> anomaly_pb2.EventStats:
        stats = self._core.stats()
        return anomaly_pb2.EventStats(
            total=stats.total,
            by_kind=dict(stats.by_kind),
            by_tenant=dict(stats.by_tenant),
            completion_tokens_by_tenant=dict(stats.completion_tokens_by_tenant),
        )
