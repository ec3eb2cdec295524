"""Builds the anomaly service: its core, the policy acting on its alerts, and its server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from maas.v1 import anomaly_pb2, anomaly_pb2_grpc
from observability import Telemetry
from services.anomaly.actuator import running_policy
from services.anomaly.core import AnomalyCore
from services.anomaly.servicer import AnomalyServicer
from services.anomaly.settings import AnomalySettings
from services.common.security import channel_security, server_security
from services.common.serving import RunningServer, start_server

SERVICE_NAME = anomaly_pb2.DESCRIPTOR.services_by_name["Anomaly"].full_name


@dataclass
class RunningAnomaly(RunningServer):
    core: AnomalyCore


@asynccontextmanager
async def serving(
    settings: AnomalySettings, telemetry: Telemetry, *, core: AnomalyCore | None = None
) -> AsyncIterator[RunningAnomaly]:
    """Serves `core` (default: a fresh one from settings; tests hand in one
    fed beforehand) and, when the policy has somewhere to act, acts on its alerts."""
    core = core or AnomalyCore(settings)
    async with running_policy(settings.policy, telemetry, core, channel_security(settings)):
        servicer = AnomalyServicer(core)
        server = await start_server(
            address=settings.address,
            telemetry=telemetry,
            service_names=[SERVICE_NAME],
            registrars=[lambda s: anomaly_pb2_grpc.add_AnomalyServicer_to_server(servicer, s)],
            security=server_security(settings),
        )
        try:
            yield RunningAnomaly(server, core)
        finally:
            await server.stop(settings.grace_period_s)
