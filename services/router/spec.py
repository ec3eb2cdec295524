"""The router service as the mesh sees it: flow control across tenants and the choice of replica."""

from __future__ import annotations

from maas.v1 import router_pb2
from services.common.spec import ServiceSpec
from services.router.settings import RouterSettings

# ErrorInfo reasons of a router's refusals that say "not now, resend": it is
# stopping, or it started so recently that a replica has not yet told its
# model. The request reached no replica; its caller may send it again (the
# gateway does).
STOPPING_REASON = "ROUTER_STOPPING"
STARTING_REASON = "ROUTER_STARTING"
RESEND_REASONS = frozenset({STOPPING_REASON, STARTING_REASON})
# For every caller's channel to the router: reconnect within a second of a
# restarted router listening again, not after gRPC's default backoff (1 s
# growing to 2 min, so a few refused attempts during a 1 s restart delayed
# the gateway's first request by 2-3 s in bench/router_restart.py).
CALLER_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

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
