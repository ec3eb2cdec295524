"""A burst of new calls larger than gRPC's default pending-call limit: every
service server takes all of them instead of cancelling the overflow."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from observability import setup
from observability.settings import TelemetrySettings
from services.common.serving import start_server

# Twice gRPC core's default soft limit (1,000 calls received but not yet taken
# by a handler), which a mesh at GPU rates reaches when clients connect at once.
BURST = 2_048


async def test_a_burst_of_streams_opened_at_once_is_served_in_full() -> None:
    server = await start_server(
        address="127.0.0.1:0",
        telemetry=setup("burst", TelemetrySettings()),
        service_names=["test.Burst"],
        registrars=[],
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await channel.channel_ready()

            async def first_status() -> str:
                call = health.Watch(health_pb2.HealthCheckRequest(service="test.Burst"))
                try:
                    async for update in call:
                        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(update.status))
                    return "ENDED"
                except grpc.aio.AioRpcError as err:
                    return err.code().name
                finally:
                    call.cancel()

            outcomes = Counter(await asyncio.gather(*(first_status() for _ in range(BURST))))
        assert outcomes == {"SERVING": BURST}
    finally:
        await server.stop(0)
