"""The inference service as the mesh sees it: one engine replica (vLLM with continuous batching)."""

from __future__ import annotations

from maas.v1 import inference_pb2
from services.common.spec import ServiceSpec
from services.inference.settings import InferenceSettings

SPEC = ServiceSpec(
    name="inference",
    module="services.inference",
    settings_type=InferenceSettings,
    grpc_services=(inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,),
    factory="services.inference.server:serving",
    port_fields=("port",),
    secret_fields=("service_token",),
    calls=(),
    public=False,
)
