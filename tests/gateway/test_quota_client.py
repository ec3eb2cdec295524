"""The gateway's calls to auth: each has a deadline (a hung auth fails a
request, never holds it), and a running request's lease is renewed."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest

from gateway.quota import QuotaClient
from maas.v1 import auth_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.auth.core import AuthCore
from services.auth.models import Plan
from services.auth.server import serving
from services.auth.settings import AuthSettings
from services.auth.sqlite_store import open_sqlite_store
from tests.support import eventually


async def test_reserve_against_a_hung_auth_ends_at_its_deadline() -> None:
    # A peer that accepts connections and never says a word: a hung process.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen()
    try:
        port = hung.getsockname()[1]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            quotas = QuotaClient(auth_pb2_grpc.AuthStub(channel), timeout_s=0.2)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                # The outer bound only keeps a broken build from hanging the suite.
                await asyncio.wait_for(quotas.reserve("t", "r", "m", 5), timeout=30)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        hung.close()


async def test_a_kept_lease_outlives_its_period_and_a_dropped_one_frees_the_slot(
    tmp_path: Path,
) -> None:
    telemetry = setup("auth", TelemetrySettings())
    settings = AuthSettings(
        port=0,
        admin_token="a" * 32,
        key_pepper="p" * 32,
        database_path=tmp_path / "auth.db",
        reservation_lease_s=0.3,
    )
    async with (
        open_sqlite_store(settings.database_path) as store,
        serving(settings, telemetry, store=store) as server,
    ):
        try:
            core = AuthCore(store, b"p")
            tenant = await core.create_tenant("t")
            await core.set_plan(tenant.tenant_id, Plan(max_concurrent_requests=1), None)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                quotas = QuotaClient(auth_pb2_grpc.AuthStub(channel))
                lease = await quotas.reserve(tenant.tenant_id, "r1", "m", 5)
                stop = quotas.hold(lease).stop
                await asyncio.sleep(lease.period_s * 4)  # four leases long, renewed
                with pytest.raises(grpc.aio.AioRpcError) as busy:
                    await quotas.reserve(tenant.tenant_id, "r2", "m", 5)
                assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                stop()  # the gateway dies mid-stream

                async def slot_back() -> bool:
                    try:
                        await quotas.reserve(tenant.tenant_id, "r2", "m", 5)
                    except grpc.aio.AioRpcError:
                        return False
                    return True

                await eventually(slot_back)
        finally:
            telemetry.shutdown()
