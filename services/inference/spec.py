"""The inference service as the mesh sees it: one engine replica (vLLM with continuous batching)."""

from __future__ import annotations

from maas.v1 import inference_pb2
from services.common.spec import ServiceSpec
from services.inference.settings import InferenceSettings

# ErrorInfo.reason of the UNAVAILABLE a replica answers while every adapter
# slot holds an adapter with requests running: the router tries another
# replica, and counts it against no replica's health (it is full, not failing).
ADAPTER_SLOTS_BUSY_REASON = "ADAPTER_SLOTS_BUSY"

SPEC = ServiceSpec(
    name="inference",
    module="services.inference",
    settings_type=InferenceSettings,
    grpc_services=(inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,),
    factory="services.inference.server:serving",
    port_fields=("port",),
    secret_fields=("service_token",),
    # Auth's adapter registry, for tenants' private adapters (adapter_slots).
    calls=("auth",),
    address_fields=(("auth", "registry_address"),),
    public=False,
)
