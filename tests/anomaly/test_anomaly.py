"""The anomaly service receives events over gRPC, and the gateway's
publisher delivers them without ever blocking its caller."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import timestamp_pb2

from maas.v1 import anomaly_pb2, anomaly_pb2_grpc
from observability import Telemetry
from services.anomaly.alerts import AlertQuery
from services.anomaly.core import AnomalyCore
from services.common.events import EventPublisher
from tests.anomaly.support import start
from tests.support import eventually, free_port


def event(tenant: str, completion: int = 5) -> anomaly_pb2.Event:
    return anomaly_pb2.Event(
        kind=anomaly_pb2.EVENT_KIND_REQUEST,
        time=timestamp_pb2.Timestamp(seconds=1_800_000_000),
        request_id="r",
        tenant_id=tenant,
        completion_tokens=completion,
        status_code="OK",
    )


async def test_report_counts_events_by_kind_and_tenant(telemetry: Telemetry) -> None:
    async with (
        start(telemetry, AnomalyCore()) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        stub = anomaly_pb2_grpc.AnomalyStub(ch)

        async def events() -> AsyncIterator[anomaly_pb2.Event]:
            for tenant in ("a", "a", "b", "a", "b"):
                yield event(tenant)

        reply = await stub.Report(events())
        assert reply.accepted == 5
        stats = await stub.GetEventStats(anomaly_pb2.GetEventStatsRequest())
        assert stats.total == 5
        assert dict(stats.by_kind) == {"EVENT_KIND_REQUEST": 5}
        assert dict(stats.by_tenant) == {"a": 3, "b": 2}
        assert dict(stats.completion_tokens_by_tenant) == {"a": 15, "b": 10}
        alerts = await stub.ListAlerts(anomaly_pb2.ListAlertsRequest())
        assert list(alerts.alerts) == []  # five requests are no anomaly


async def test_publisher_delivers_events(telemetry: Telemetry) -> None:
    core = AnomalyCore()
    async with (
        start(telemetry, core) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        publisher = EventPublisher(ch)
        await publisher.start()
        for i in range(50):
            assert publisher.publish(event(f"t{i % 3}"))
        await eventually(lambda: core.stats().total == 50)
        await publisher.aclose()
        assert publisher.sent == 50
        assert (publisher.dropped, publisher.lost) == (0, 0)


async def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as ch:
        publisher = EventPublisher(ch, max_queue=2)  # not started: nothing drains it
        results = [publisher.publish(event("t")) for _ in range(5)]
        assert results == [True, True, False, False, False]
        assert (publisher.published, publisher.dropped) == (2, 3)


def budget_alert(tenant: str) -> anomaly_pb2.Event:
    return anomaly_pb2.Event(
        kind=anomaly_pb2.EVENT_KIND_BUDGET_THRESHOLD,
        time=timestamp_pb2.Timestamp(seconds=1_800_000_000),
        tenant_id=tenant,
        budget=f"budget:tenant:{tenant}:monthly",
        spent_micros=900,
        threshold_micros=800,
    )


async def test_a_full_queue_still_takes_a_budget_alert_and_delivers_it(
    telemetry: Telemetry,
) -> None:
    port = free_port()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        # Anomaly not up yet: a flood fills the queue while nothing drains it.
        publisher = EventPublisher(ch, max_queue=3, initial_backoff_s=0.05)
        flood = [publisher.publish(event("flood")) for _ in range(10)]
        assert flood.count(False) == 7
        # Reported once per budget and period: dropping it would lose it for good.
        assert publisher.publish(budget_alert("payer"))
        core = AnomalyCore()
        async with start(telemetry, core, port=port):
            await publisher.start()
            await eventually(lambda: core.stats().total == 4)
            await publisher.aclose()
        [alert] = core.alerts(AlertQuery())
        assert alert.kind == "budget_threshold" and alert.tenant_id == "payer"
        assert (publisher.sent, publisher.dropped, publisher.alerts_dropped) == (4, 7, 0)


async def test_alerts_past_their_own_bound_are_dropped_and_counted() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as ch:
        publisher = EventPublisher(ch, max_queue=1, max_alerts=2)  # not started
        results = [publisher.publish(budget_alert(f"t{i}")) for i in range(3)]
        assert results == [True, True, False]
        assert publisher.publish(event("t"))  # the ordinary lane has its own room
        assert (publisher.alerts_dropped, publisher.dropped, publisher.queued) == (1, 0, 3)


async def test_events_wait_for_anomaly_to_come_up(telemetry: Telemetry) -> None:
    port = free_port()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        publisher = EventPublisher(ch, initial_backoff_s=0.05)
        await publisher.start()
        for _ in range(10):
            publisher.publish(event("early"))
        core = AnomalyCore()
        async with start(telemetry, core, port=port):
            await eventually(lambda: core.stats().by_tenant["early"] == 10)
            await publisher.aclose()


async def test_a_broken_stream_counts_its_events_lost_and_the_next_one_delivers(
    telemetry: Telemetry,
) -> None:
    port = free_port()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        publisher = EventPublisher(ch, initial_backoff_s=0.05)
        await publisher.start()
        first = AnomalyCore()
        async with start(telemetry, first, port=port):
            for _ in range(4):
                publisher.publish(event("before"))
            await eventually(lambda: first.stats().total == 4)
        # The server stopped: the open call broke with its four events in it.
        await eventually(lambda: publisher.lost == 4)
        second = AnomalyCore()
        async with start(telemetry, second, port=port):
            for _ in range(3):
                publisher.publish(event("after"))
            await eventually(lambda: second.stats().total == 3)
            await publisher.aclose()
            assert (publisher.sent, publisher.lost, publisher.dropped) == (3, 4, 0)
