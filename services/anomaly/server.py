"""Builds the anomaly service's server."""

from __future__ import annotations

from maas.v1 import anomaly_pb2, anomaly_pb2_grpc
from observability import Telemetry
from services.anomaly.core import AnomalyCore
from services.anomaly.servicer import AnomalyServicer
from services.anomaly.settings import AnomalySettings
from services.common.security import server_security
from services.common.serving import ServiceServer, start_server

SERVICE_NAME = anomaly_pb2.DESCRIPTOR.services_by_name["Anomaly"].full_name


async def create_server(
    settings: AnomalySettings, telemetry: Telemetry, core: AnomalyCore
) -> ServiceServer:
    servicer = AnomalyServicer(core)
    return await start_server(
        address=settings.address,
        telemetry=telemetry,
        service_names=[SERVICE_NAME],
        registrars=[lambda s: anomaly_pb2_grpc.add_AnomalyServicer_to_server(servicer, s)],
        security=server_security(settings),
    )
