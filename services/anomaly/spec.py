"""The anomaly service as the mesh sees it: usage events in, alerts and actions out."""

from __future__ import annotations

from maas.v1 import anomaly_pb2
from services.anomaly.settings import AnomalySettings
from services.common.spec import ServiceSpec

SPEC = ServiceSpec(
    name="anomaly",
    module="services.anomaly",
    settings_type=AnomalySettings,
    grpc_services=(anomaly_pb2.DESCRIPTOR.services_by_name["Anomaly"].full_name,),
    factory="services.anomaly.server:serving",
    port_fields=("port",),
    secret_fields=("service_token", "policy.admin_token"),
    calls=("auth", "router"),
    address_fields=(("auth", "policy.auth_address"), ("router", "policy.router_address")),
    public=False,
)
