"""Usage records survive a ledger outage and a gateway restart, and are
billed exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from google.protobuf import timestamp_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.metrics import GatewayMetrics
from gateway.outbox import UsageOutbox
from maas.v1 import metering_pb2, metering_pb2_grpc
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.auth.server import serving
from services.auth.settings import AuthSettings
from services.auth.sqlite_store import open_sqlite_store
from tests.support import eventually, free_port, metric_total


def record(i: int) -> metering_pb2.UsageRecord:
    return metering_pb2.UsageRecord(
        request_id=f"out-{i}",
        tenant_id="t-outbox",
        key_id="k",
        model="tiny",
        prompt_tokens=2,
        completion_tokens=i,
        start_time=timestamp_pb2.Timestamp(seconds=1_800_000_000),
        end_time=timestamp_pb2.Timestamp(seconds=1_800_000_001),
        status=metering_pb2.REQUEST_STATUS_COMPLETED,
    )


def gateway_metrics() -> tuple[GatewayMetrics, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return GatewayMetrics(MeterProvider(metric_readers=[reader]).get_meter("test")), reader


@pytest_asyncio.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    tel = setup("auth", TelemetrySettings())
    yield tel
    tel.shutdown()


async def test_records_wait_out_an_outage_and_a_restart(
    tmp_path: Path, telemetry: Telemetry
) -> None:
    port = free_port()
    outbox_path = tmp_path / "outbox.db"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = metering_pb2_grpc.MeteringStub(channel)
        # The ledger is down: records pile up on disk; the gateway then stops.
        metrics, reader = gateway_metrics()
        first = UsageOutbox(
            outbox_path, stub, metrics=metrics, initial_backoff_s=0.05, max_backoff_s=0.2
        )
        await first.open()
        for i in range(20):
            first.add(record(i))
        first.add(record(0))  # a retry of the same request
        await first.aclose(timeout_s=0.3)
        assert first.delivered == 0
        assert metric_total(reader, "maas.gateway.outbox.backlog") == 20

        # The ledger comes back; a new gateway process starts on the same outbox.
        settings = AuthSettings(
            port=port, admin_token="a" * 32, key_pepper="p" * 32, database_path=tmp_path / "auth.db"
        )
        async with (
            open_sqlite_store(settings.database_path) as store,
            serving(settings, telemetry, store=store),
        ):
            metrics, reader = gateway_metrics()
            second = UsageOutbox(outbox_path, stub, metrics=metrics, initial_backoff_s=0.05)
            await second.open()
            try:
                await eventually(lambda: second.delivered == 20)
                assert await second.pending() == 0
                assert metric_total(reader, "maas.gateway.outbox.backlog") == 0
                summary = await stub.GetUsage(
                    metering_pb2.MeteringGetUsageRequest(tenant_id="t-outbox")
                )
                assert summary.summary.requests == 20
                assert summary.summary.completion_tokens == sum(range(20))
            finally:
                await second.aclose(timeout_s=1.0)


async def test_a_record_the_ledger_refuses_is_set_aside_and_the_rest_delivered(
    tmp_path: Path, telemetry: Telemetry
) -> None:
    settings = AuthSettings(
        port=0, admin_token="a" * 32, key_pepper="p" * 32, database_path=tmp_path / "auth.db"
    )
    async with (
        open_sqlite_store(settings.database_path) as store,
        serving(settings, telemetry, store=store) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = metering_pb2_grpc.MeteringStub(channel)
        # Another gateway already billed out-3 with other numbers.
        conflicting = record(3)
        conflicting.completion_tokens = 1000
        await stub.RecordUsage(metering_pb2.RecordUsageRequest(record=conflicting))
        metrics, reader = gateway_metrics()
        outbox = UsageOutbox(tmp_path / "outbox.db", stub, metrics=metrics, initial_backoff_s=0.05)
        await outbox.open()
        try:
            for i in range(10):
                outbox.add(record(i))
            await eventually(lambda: outbox.delivered + outbox.dead_letters == 10)
            assert (outbox.delivered, outbox.dead_letters) == (9, 1)
            assert metric_total(reader, "maas.gateway.outbox.dead_letters") == 1
            assert await outbox.pending() == 0
            summary = await stub.GetUsage(
                metering_pb2.MeteringGetUsageRequest(tenant_id="t-outbox")
            )
            # Nine from the outbox and the first bill for out-3, never a second.
            assert summary.summary.requests == 10
            assert summary.summary.completion_tokens == sum(range(10)) - 3 + 1000
        finally:
            await outbox.aclose(timeout_s=1.0)


class FakeBrokenOnceStub:
    """Fake: a metering stub whose first call fails with an error that is not
    gRPC's (as a bug in a client library would); a real stub cannot be made to
    do that on demand. Later calls go to the real stub."""

    def __init__(self, real: metering_pb2_grpc.MeteringAsyncStub) -> None:
        self._real = real
        self.failures = 0

    async def RecordUsageBatch(self, request: Any, **kwargs: Any) -> Any:
        if self.failures == 0:
            self.failures += 1
            raise RuntimeError("something nobody expected")
        return await self._real.RecordUsageBatch(request, **kwargs)


async def test_the_sender_survives_any_error_and_unreadable_rows(
    tmp_path: Path, telemetry: Telemetry
) -> None:
    settings = AuthSettings(
        port=0, admin_token="a" * 32, key_pepper="p" * 32, database_path=tmp_path / "auth.db"
    )
    outbox_path = tmp_path / "outbox.db"
    async with (
        open_sqlite_store(settings.database_path) as store,
        serving(settings, telemetry, store=store) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        real = metering_pb2_grpc.MeteringStub(channel)
        broken: Any = FakeBrokenOnceStub(real)
        metrics, reader = gateway_metrics()
        outbox = UsageOutbox(
            outbox_path,
            broken,
            metrics=metrics,
            initial_backoff_s=0.05,
        )
        await outbox.open()
        try:
            import aiosqlite

            async with aiosqlite.connect(outbox_path) as disk:  # a corrupt row on disk
                await disk.execute("INSERT INTO outbox VALUES ('torn', x'ffffffff')")
                await disk.commit()
            for i in range(5):
                outbox.add(record(i))
            await eventually(lambda: outbox.delivered == 5)
            assert broken.failures == 1
            assert outbox.dead_letters == 1
            assert metric_total(reader, "maas.gateway.outbox.dead_letters") == 1
            assert metric_total(reader, "maas.gateway.outbox.backlog") == 0
            summary = await real.GetUsage(
                metering_pb2.MeteringGetUsageRequest(tenant_id="t-outbox")
            )
            assert summary.summary.requests == 5
        finally:
            await outbox.aclose(timeout_s=1.0)


async def test_a_later_record_of_a_request_replaces_the_one_waiting(
    tmp_path: Path,
) -> None:
    port = free_port()  # the ledger is down: both records wait on disk
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        outbox = UsageOutbox(
            tmp_path / "outbox.db", metering_pb2_grpc.MeteringStub(channel), max_backoff_s=0.2
        )
        await outbox.open()
        progress = record(7)
        progress.status = metering_pb2.REQUEST_STATUS_COMPLETED
        outbox.add(progress)
        final = record(9)
        final.request_id = progress.request_id
        outbox.add(final)
        await outbox.aclose(timeout_s=0.1)
        assert outbox.backlog == 1
