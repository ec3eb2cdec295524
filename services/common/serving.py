"""Server lifecycle shared by every service: interceptors, health, reflection,
graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from observability import Telemetry
from services.common.errors import ErrorMappingInterceptor, Translator
from services.common.generation_limits import MAX_PUBLIC_MESSAGE_BYTES, MAX_PUBLIC_METADATA_BYTES
from services.common.security import ServerSecurity

log = structlog.get_logger(__name__)

Registrar = Callable[[grpc.aio.Server], None]

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    # Fail loudly when the port is taken instead of silently sharing it.
    ("grpc.so_reuseport", 0),
    # Chat histories can be long; 16 MiB leaves room past the 4 MiB default.
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Detect dead peers on long idle streams within a minute.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # Calls received but not yet taken by a handler: past gRPC's default soft
    # limit of 1,000 the server cancels new calls outright, which a burst of
    # clients at GPU rates reaches (2,048 streams opened at once lost 5-30%).
    # Each waits as a small record; the hard limit keeps that memory bounded.
    ("grpc.server.max_pending_requests", 16_384),
    ("grpc.server.max_pending_requests_hard_limit", 32_768),
)


# The public gateway's port: tenants, not the mesh, write to it.
PUBLIC_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    *(option for option in SERVER_OPTIONS if option[0] != "grpc.max_receive_message_length"),
    # The largest prompt the mesh accepts plus the other fields (generation_limits).
    ("grpc.max_receive_message_length", MAX_PUBLIC_MESSAGE_BYTES),
    # Headers a caller may send; past it gRPC refuses the call before any handler runs.
    ("grpc.max_metadata_size", MAX_PUBLIC_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", MAX_PUBLIC_METADATA_BYTES),
)


@dataclass
class ServiceServer:
    """A started gRPC server and the health state it reports."""

    server: grpc.aio.Server
    port: int
    service_names: tuple[str, ...]
    health: health.aio.HealthServicer = field(repr=False)

    async def set_serving(self, serving: bool) -> None:
        """Readiness: the full service names; liveness ("") stays SERVING while up."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self.service_names:
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Reports NOT_SERVING everywhere, then lets in-flight calls finish for grace_s."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


@dataclass
class RunningServer:
    """What a service's factory yields at the least: its gRPC server, whose
    port is the settings field `port`."""

    server: ServiceServer

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def ports(self) -> dict[str, int]:
        return {"port": self.server.port}


async def start_server(
    *,
    address: str,
    telemetry: Telemetry,
    service_names: Sequence[str],
    registrars: Sequence[Registrar],
    translate: Translator | None = None,
    serving: bool = True,
    security: ServerSecurity | None = None,
    options: Sequence[tuple[str, int]] = SERVER_OPTIONS,
) -> ServiceServer:
    """Builds and starts an aio server with the mesh's interceptors, health and
    reflection. `serving=False` starts it NOT_SERVING until `set_serving(True)`.
    `security`: TLS and mesh-only admission (default: plaintext, open).
    `options`: gRPC server options (PUBLIC_SERVER_OPTIONS on a public port)."""
    security = security or ServerSecurity()
    mapping = ErrorMappingInterceptor(translate) if translate else ErrorMappingInterceptor()
    # Error mapping runs inside telemetry so the span records the final status;
    # the mesh-only check inside error mapping so its refusal is mapped too.
    server = grpc.aio.server(
        interceptors=[*telemetry.server_interceptors(), mapping, *security.interceptors()],
        options=options,
    )
    for register in registrars:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = (
        server.add_secure_port(address, security.credentials)
        if security.credentials is not None
        else server.add_insecure_port(address)
    )
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    await server.start()
    running = ServiceServer(server, port, tuple(service_names), health_servicer)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await running.set_serving(serving)
    log.info(
        "server started",
        address=address,
        port=port,
        services=list(service_names),
        transport=security.transport,
        mesh_only=security.service_token is not None,
    )
    return running


async def wait_for_shutdown_signal() -> None:
    """Returns at the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
