"""The auth service as the mesh sees it: tenants, API keys, quotas and the usage ledger."""

from __future__ import annotations

from maas.v1 import adapter_registry_pb2, auth_pb2, metering_pb2
from services.auth.settings import AuthSettings
from services.common.spec import ServiceSpec

SPEC = ServiceSpec(
    name="auth",
    module="services.auth",
    settings_type=AuthSettings,
    grpc_services=(
        auth_pb2.DESCRIPTOR.services_by_name["Auth"].full_name,
        metering_pb2.DESCRIPTOR.services_by_name["Metering"].full_name,
        adapter_registry_pb2.DESCRIPTOR.services_by_name["AdapterRegistry"].full_name,
    ),
    factory="services.auth.server:serving",
    port_fields=("port",),
    secret_fields=("service_token", "admin_token", "key_pepper"),
    calls=(),
    state_fields=("database_path",),
    public=False,
)
