"""Builds the router: its replica set and flow policy from settings, and its
gRPC server, which is ready while any replica serves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from maas.v1 import router_pb2, router_pb2_grpc
from observability import Telemetry
from services.common.security import channel_security, server_security
from services.common.serving import RunningServer, start_server
from services.router.dispatcher import Dispatcher, FlowPolicy
from services.router.limiter import GradientLimiter
from services.router.metrics import RouterMetrics
from services.router.replicas import EjectionPolicy, ReplicaSet
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


@dataclass
class RunningRouter(RunningServer):
    replicas: ReplicaSet

    async def wait_ready(self, timeout_s: float) -> None:
        """Returns once a replica serves (the router's readiness)."""
        await self.replicas.wait_ready(timeout_s=timeout_s)


def replica_set(settings: RouterSettings, telemetry: Telemetry) -> ReplicaSet:
    return ReplicaSet(
        settings.replicas,
        telemetry,
        retry_initial_s=settings.health_retry_initial_s,
        retry_max_s=settings.health_retry_max_s,
        ejection=EjectionPolicy(
            settings.ejection_failures, settings.ejection_base_s, settings.ejection_max_s
        ),
        limiter=lambda: GradientLimiter(
            initial=settings.initial_concurrency, tolerance=settings.latency_tolerance
        ),
        security=channel_security(settings),
    )


def flow_policy(settings: RouterSettings) -> FlowPolicy:
    return FlowPolicy(
        max_queue=settings.max_queue,
        max_queue_per_tenant=settings.max_queue_per_tenant,
        aging_s=settings.aging_s,
        max_queue_wait_s=settings.max_queue_wait_s,
        affinity_slack=settings.affinity_slack,
        choice=settings.replica_choice,
        reserved_share=settings.reserved_share,
        tenant_memory_s=settings.tenant_memory_s,
        light_headroom=settings.light_headroom,
        adapter_affinity=settings.adapter_affinity,
        adapter_idle_s=settings.adapter_idle_s,
    )


@asynccontextmanager
async def serving(settings: RouterSettings, telemetry: Telemetry) -> AsyncIterator[RunningRouter]:
    """Serves the router over the replica set and flow policy its settings describe."""
    replicas = replica_set(settings, telemetry)
    await replicas.start()
    try:
        async with routing(settings, telemetry, replicas, flow_policy(settings)) as running:
            yield running
    finally:
        await replicas.aclose()


@asynccontextmanager
async def routing(
    settings: RouterSettings,
    telemetry: Telemetry,
    replicas: ReplicaSet,
    policy: FlowPolicy | None = None,
) -> AsyncIterator[RunningRouter]:
    """Serves the router over a started replica set (tests build their own to
    vary what settings do not: limits, clocks); readiness follows whether any
    replica is serving."""
    dispatcher = Dispatcher(replicas, policy)
    metrics = RouterMetrics(telemetry.meter(), dispatcher, replicas)
    dispatcher.on_shed = lambda reason: metrics.shed.add(1, {"reason": reason})
    servicer = RouterServicer(replicas, dispatcher, metrics, max_attempts=settings.max_attempts)
    server = await start_server(
        address=settings.address,
        telemetry=telemetry,
        service_names=[SERVICE_NAME],
        registrars=[lambda s: router_pb2_grpc.add_RouterServicer_to_server(servicer, s)],
        serving=False,
        security=server_security(settings),
    )

    async def follow_replicas() -> None:
        async for serving in replicas.serving_changes():
            await server.set_serving(serving)

    follower = asyncio.create_task(follow_replicas())
    try:
        yield RunningRouter(server, replicas)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        # Requests not yet on a replica are refused now, retryable, rather
        # than cancelled when the grace period ends; streams already placed
        # get the grace period to finish.
        dispatcher.stop()
        await server.stop(settings.grace_period_s)
