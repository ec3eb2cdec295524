"""The gateway as the mesh sees it: the public gRPC API and its OpenAI HTTP face."""

from __future__ import annotations

from gateway.settings import GatewaySettings
from maas.v1 import gateway_pb2
from services.common.spec import ServiceSpec

SPEC = ServiceSpec(
    name="gateway",
    module="gateway",
    settings_type=GatewaySettings,
    grpc_services=(gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,),
    factory="gateway.server:serving",
    port_fields=("port", "http_port"),
    secret_fields=("service_token",),
    calls=("auth", "router", "anomaly"),
    state_fields=("usage_outbox_path",),
    public=True,
)
