"""The console as the deploy files see it: an HTTP-only service (no gRPC
health), ready when its sign-in page answers."""

from __future__ import annotations

from services.common.spec import ServiceSpec
from services.console.settings import ConsoleSettings

SPEC = ServiceSpec(
    name="console",
    module="services.console",
    settings_type=ConsoleSettings,
    grpc_services=(),
    factory="services.console.server:serving",
    calls=("gateway", "auth", "router", "anomaly"),
    public=True,
    http_ready="/signin",
)
