"""The router service as the mesh sees it: flow control across tenants and the choice of replica."""

from __future__ import annotations

from maas.v1 import router_pb2
from services.common.spec import ServiceSpec
from services.router.settings import RouterSettings

SPEC = ServiceSpec(
    name="router",
    module="services.router",
    settings_type=RouterSettings,
    grpc_services=(router_pb2.DESCRIPTOR.services_by_name["Router"].full_name,),
    factory="services.router.server:serving",
    port_fields=("port",),
    secret_fields=("service_token",),
    calls=("inference",),
    address_fields=(("inference", "replicas"),),
    public=False,
)
