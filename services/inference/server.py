"""Builds the inference gRPC server around an engine."""

from __future__ import annotations

import structlog

from maas.v1 import inference_pb2, inference_pb2_grpc
from observability import Telemetry
from services.common.security import ServerSecurity
from services.common.serving import ServiceServer, start_server
from services.inference.engine import Engine
from services.inference.pacing import StreamPacer
from services.inference.servicer import InferenceServicer, translate_engine_error
from services.inference.watchdog import wait_engine_failure

log = structlog.get_logger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


async def create_server(
    address: str,
    telemetry: Telemetry,
    engine: Engine | None = None,
    *,
    stream_messages_per_s: float = 0.0,
    security: ServerSecurity | None = None,
    log_content: bool = False,
) -> tuple[ServiceServer, InferenceServicer]:
    """Starts the server; NOT_SERVING until an engine is attached with `attach`.
    `log_content`: log each request's prompt and completion (debugging only)."""
    servicer = InferenceServicer(
        engine, pacer=StreamPacer(stream_messages_per_s), log_content=log_content
    )
    server = await start_server(
        address=address,
        telemetry=telemetry,
        service_names=[SERVICE_NAME],
        registrars=[lambda s: inference_pb2_grpc.add_InferenceServicer_to_server(servicer, s)],
        translate=translate_engine_error,
        serving=engine is not None,
        security=security,
    )
    return server, servicer


async def attach(server: ServiceServer, servicer: InferenceServicer, engine: Engine) -> None:
    """Puts a loaded engine behind the server and reports SERVING."""
    servicer.attach(engine)
    await server.set_serving(True)


async def watch_engine(server: ServiceServer, engine: Engine, *, stall_s: float) -> str:
    """Waits until the engine dies or wedges; then reports NOT_SERVING on
    every health service, liveness ("") included, for good (a dead engine
    does not come back in this process), and returns why."""
    reason = await wait_engine_failure(engine, stall_s=stall_s)
    log.error("engine failed; this replica no longer serves", reason=reason)
    await server.health.enter_graceful_shutdown()
    return reason
