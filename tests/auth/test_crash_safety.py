"""The ledger survives a SIGKILL of the auth process under load: every
acknowledged record is there after a restart, and retries never bill twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.v1 import metering_pb2, metering_pb2_grpc
from tests.auth.conftest import REPO
from tests.support import free_port

RECORDS = 300
CLIENTS = 16


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def database_args(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[str]]:
    if request.param == "sqlite":
        yield ["--database-path", str(tmp_path / "auth.db")]
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    name = f"crash_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield ["--database-url", dsn.rsplit("/", 1)[0] + f"/{name}"]
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


def start_auth(port: int, database_args: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MAAS_AUTH_ADMIN_TOKEN="a" * 32, MAAS_AUTH_KEY_PEPPER="p" * 32)
    return subprocess.Popen(
        [sys.executable, "-m", "services.auth", "--port", str(port), *database_args],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="maas.v1.Metering")
    async for update in health.Watch(request, wait_for_ready=True, timeout=60):
        if update.status == health_pb2.HealthCheckResponse.SERVING:
            return


def record(i: int, tenant: str) -> metering_pb2.UsageRecord:
    return metering_pb2.UsageRecord(
        request_id=f"req-{i}",
        tenant_id=tenant,
        key_id="k",
        model="tiny",
        prompt_tokens=3,
        completion_tokens=i,
        start_time=timestamp_pb2.Timestamp(seconds=1_800_000_000),
        end_time=timestamp_pb2.Timestamp(seconds=1_800_000_001),
        status=metering_pb2.REQUEST_STATUS_COMPLETED,
    )


async def test_sigkill_under_load_loses_and_doubles_nothing(database_args: list[str]) -> None:
    port = free_port()
    tenant = "tenant-crash"
    acknowledged: set[int] = set()
    first_acks = asyncio.Event()
    process = start_auth(port, database_args)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await wait_serving(channel)
        stub = metering_pb2_grpc.MeteringStub(channel)

        async def client(indices: range, on_ack: Callable[[int], None]) -> None:
            for i in indices:
                while True:  # what a gateway does: retry until acknowledged
                    try:
                        await stub.RecordUsage(
                            metering_pb2.RecordUsageRequest(record=record(i, tenant)),
                            wait_for_ready=True,
                            timeout=30,
                        )
                    except grpc.aio.AioRpcError as err:
                        assert err.code() in {
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.CANCELLED,
                        }, err
                        await asyncio.sleep(0.05)
                        continue
                    on_ack(i)
                    break

        def on_ack(i: int) -> None:
            acknowledged.add(i)
            if len(acknowledged) >= RECORDS // 4:
                first_acks.set()

        per_client = RECORDS // CLIENTS
        clients = [
            asyncio.create_task(client(range(c * per_client, (c + 1) * per_client), on_ack))
            for c in range(CLIENTS)
        ]
        await first_acks.wait()
        acked_before_kill = set(acknowledged)
        process.send_signal(signal.SIGKILL)
        process.wait()
        process = start_auth(port, database_args)
        try:
            await asyncio.wait_for(asyncio.gather(*clients), timeout=120)
            total = per_client * CLIENTS
            assert acknowledged == set(range(total))
            assert acked_before_kill < acknowledged
            summary = await stub.GetUsage(metering_pb2.MeteringGetUsageRequest(tenant_id=tenant))
            assert summary.summary.requests == total
            assert summary.summary.completion_tokens == sum(range(total))
        finally:
            process.terminate()
            process.wait()
