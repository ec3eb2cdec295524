"""Alerts over gRPC, against a real server on port 0: watched as events
stream in through Report, and listed with filters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from maas.v1 import anomaly_pb2, anomaly_pb2_grpc
from observability import Telemetry
from services.anomaly.alerts import AlertQuery
from services.anomaly.core import AnomalyCore
from services.anomaly.events import RequestEvent
from tests.anomaly.support import T0, feed, request, start, stuffing
from tests.support import bad_request_fields, eventually


def to_proto(event: RequestEvent) -> anomaly_pb2.Event:
    message = anomaly_pb2.Event(
        kind=event.kind,
        request_id=event.request_id,
        tenant_id=event.tenant_id,
        key_id=event.key_id,
        model=event.model,
        replica=event.replica,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        time_to_first_token_s=event.time_to_first_token_s,
        duration_s=event.duration_s,
        status_code=event.status_code,
        source=event.source,
    )
    message.time.FromDatetime(event.time)
    return message


async def report(stub: anomaly_pb2_grpc.AnomalyAsyncStub, events: Iterable[RequestEvent]) -> int:
    async def stream() -> AsyncIterator[anomaly_pb2.Event]:
        for event in events:
            yield to_proto(event)

    reply = await stub.Report(stream())
    return reply.accepted


async def next_alert(watch: Any) -> anomaly_pb2.Alert:
    alert = await asyncio.wait_for(watch.read(), 10)
    assert isinstance(alert, anomaly_pb2.Alert)
    return alert


def tenant_error_burst(tenant: str) -> list[RequestEvent]:
    """Two minutes of clean traffic, then most of a bucket's requests failing."""
    clean = [request(T0 + i * 0.5, tenant=tenant, key=f"{tenant}-k") for i in range(240)]
    burst = [
        request(T0 + 121 + i * 0.1, tenant=tenant, key=f"{tenant}-k", status="INVALID_ARGUMENT")
        for i in range(30)
    ]
    return clean + burst


async def test_watch_receives_the_alert_that_reported_events_raise(telemetry: Telemetry) -> None:
    core = AnomalyCore()
    async with (
        start(telemetry, core) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = anomaly_pb2_grpc.AnomalyStub(channel)
        watch = stub.WatchAlerts(anomaly_pb2.WatchAlertsRequest(kind="auth_failure_burst"))
        await eventually(lambda: core.watchers == 1)
        assert await report(stub, stuffing("ipv4:203.0.113.7")) == 40
        alert = await next_alert(watch)
        assert alert.kind == "auth_failure_burst"
        assert alert.series == "source:ipv4:203.0.113.7"
        assert alert.severity == anomaly_pb2.SEVERITY_CRITICAL
        assert alert.observed > alert.expected
        assert alert.first_seen.ToSeconds() >= int(T0)
        assert alert.detail
        watch.cancel()
        await eventually(lambda: core.watchers == 0)


async def test_watch_replays_alerts_since_then_follows(telemetry: Telemetry) -> None:
    core = AnomalyCore()
    feed(core, stuffing("ipv4:203.0.113.1"))
    async with (
        start(telemetry, core) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = anomaly_pb2_grpc.AnomalyStub(channel)
        watch = stub.WatchAlerts(
            anomaly_pb2.WatchAlertsRequest(since=timestamp_pb2.Timestamp(seconds=int(T0)))
        )
        replayed = await next_alert(watch)
        assert replayed.series == "source:ipv4:203.0.113.1"
        await report(stub, stuffing("ipv4:203.0.113.2", at=T0 + 60))
        followed = await next_alert(watch)
        assert followed.series == "source:ipv4:203.0.113.2"
        watch.cancel()


async def test_list_alerts_filters(telemetry: Telemetry) -> None:
    core = AnomalyCore()
    feed(core, tenant_error_burst("a") + tenant_error_burst("b") + stuffing("ipv4:192.0.2.9"))
    async with (
        start(telemetry, core) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = anomaly_pb2_grpc.AnomalyStub(channel)

        async def listed(**filters: Any) -> list[tuple[str, str]]:
            query = anomaly_pb2.ListAlertsRequest(**filters)
            return [(a.kind, a.series) for a in (await stub.ListAlerts(query)).alerts]

        everything = await listed()
        assert set(everything) == {
            ("error_burst", "tenant:a"),
            ("error_burst", "tenant:b"),
            ("auth_failure_burst", "source:ipv4:192.0.2.9"),
        }
        assert await listed(tenant_id="a") == [("error_burst", "tenant:a")]
        assert await listed(kind="auth_failure_burst") == [
            ("auth_failure_burst", "source:ipv4:192.0.2.9")
        ]
        assert await listed(limit=2) == everything[:2]
        assert await listed(since=timestamp_pb2.Timestamp(seconds=int(T0) + 3600)) == []
        critical = await listed(min_severity=anomaly_pb2.SEVERITY_CRITICAL)
        assert set(critical) <= set(everything)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await listed(kind="bad_vibes")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(err.value) == ["kind"]

        stats = await stub.GetEventStats(anomaly_pb2.GetEventStatsRequest())
        assert stats.total == 2 * 270 + 40
        assert stats.series_tracked > 0


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"budget": "budget:" + "k" * 10_000}, "budget"),
        ({"spent_micros": -1, "threshold_micros": 5}, "spent_micros"),
        ({"spent_micros": 2**63 - 1, "threshold_micros": -(2**63)}, "threshold_micros"),
    ],
)
async def test_a_hostile_budget_threshold_is_rejected_naming_it_and_the_stream_goes_on(
    telemetry: Telemetry, fields: dict[str, Any], named: str
) -> None:
    core = AnomalyCore()
    async with (
        start(telemetry, core) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = anomaly_pb2_grpc.AnomalyStub(channel)
        event = anomaly_pb2.Event(
            kind=anomaly_pb2.EVENT_KIND_BUDGET_THRESHOLD, tenant_id="t", **fields
        )

        good = anomaly_pb2.Event(
            kind=anomaly_pb2.EVENT_KIND_BUDGET_THRESHOLD,
            tenant_id="t",
            budget="budget:tenant:monthly",
            spent_micros=900,
            threshold_micros=800,
        )

        async def stream() -> AsyncIterator[anomaly_pb2.Event]:
            yield event
            yield good

        reply = await stub.Report(stream())
        assert (reply.accepted, reply.rejected) == (1, 1)
        assert reply.first_rejected_field == named
        # Only the good event raised an alert.
        [alert] = core.alerts(AlertQuery())
        assert alert.kind == "budget_threshold" and "budget:tenant:monthly" in alert.series
