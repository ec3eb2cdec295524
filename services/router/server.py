"""Builds the router's gRPC server; it is ready while any replica serves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from maas.v1 import router_pb2, router_pb2_grpc
from observability import Telemetry
from services.common.security import ServerSecurity
from services.common.serving import ServiceServer, start_server
from services.router.dispatcher import Dispatcher, FlowPolicy
from services.router.metrics import RouterMetrics
from services.router.replicas import ReplicaSet
from services.router.servicer import RouterServicer

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


@asynccontextmanager
async def running_router(
    address: str,
    telemetry: Telemetry,
    replicas: ReplicaSet,
    grace_s: float,
    *,
    policy: FlowPolicy | None = None,
    max_attempts: int = 2,
    security: ServerSecurity | None = None,
) -> AsyncIterator[ServiceServer]:
    """Serves the router; readiness follows whether any replica is serving."""
    dispatcher = Dispatcher(replicas, policy)
    metrics = RouterMetrics(telemetry.meter(), dispatcher, replicas)
    dispatcher.on_shed = lambda reason: metrics.shed.add(1, {"reason": reason})
    servicer = RouterServicer(replicas, dispatcher, metrics, max_attempts=max_attempts)
    server = await start_server(
        address=address,
        telemetry=telemetry,
        service_names=[SERVICE_NAME],
        registrars=[lambda s: router_pb2_grpc.add_RouterServicer_to_server(servicer, s)],
        serving=False,
        security=security,
    )

    async def follow_replicas() -> None:
        async for serving in replicas.serving_changes():
            await server.set_serving(serving)

    follower = asyncio.create_task(follow_replicas())
    try:
        yield server
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await server.stop(grace_s)
