"""Builds the inference service: its gRPC server around an engine (opened
from settings unless handed in) and the watchdog that notices the engine die."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import structlog

from maas.v1 import inference_pb2, inference_pb2_grpc
from observability import Telemetry
from services.common.security import ServerSecurity, server_security
from services.common.serving import RunningServer, ServiceServer, start_server
from services.inference.adapter_fetch import registry_fetch
from services.inference.adapter_slots import AdapterFetch, AdapterSlots
from services.inference.engine import Engine, ModelCard
from services.inference.engine_metrics import EngineMetrics
from services.inference.pacing import StreamPacer
from services.inference.servicer import InferenceServicer, translate_engine_error
from services.inference.settings import InferenceSettings
from services.inference.watchdog import wait_engine_failure

log = structlog.get_logger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name

# Time the health watchers (the router) have to read NOT_SERVING before a
# failed replica's server goes; its streams have failed already, or are stuck.
FAILED_ENGINE_GRACE_S = 1.0


@dataclass
class RunningInference(RunningServer):
    engine: Engine
    # The watchdog: resolves, with why, once the engine has died or wedged.
    watchdog: asyncio.Task[str]

    @property
    def failed(self) -> asyncio.Task[str]:
        return self.watchdog


@asynccontextmanager
async def serving(
    settings: InferenceSettings,
    telemetry: Telemetry,
    *,
    engine: Engine | None = None,
    adapter_fetch: AdapterFetch | None = None,
) -> AsyncIterator[RunningInference]:
    """Serves `engine`, or one opened from settings: then the server is up
    (health NOT_SERVING) while the model loads, so probes see progress, and
    SERVING once it has. Health turns NOT_SERVING for good if the engine dies
    or wedges (`failed` resolves); on exit the server stops (briefly when the
    engine has failed) before an engine opened here closes. Private adapters
    (`adapter_slots`) are fetched with `adapter_fetch`, or from the registry
    at `registry_address`."""
    async with AsyncExitStack() as fetch_stack:
        fetch = adapter_fetch
        if fetch is None:
            fetch = await fetch_stack.enter_async_context(registry_fetch(settings, telemetry))
        async with _serving(settings, telemetry, engine, fetch) as running:
            yield running


def adapter_slots(
    settings: InferenceSettings, engine: Engine, fetch: AdapterFetch
) -> AdapterSlots | None:
    if settings.adapter_slots <= 0:
        return None
    return AdapterSlots(settings.adapter_slots, engine, fetch, base_model=engine.model_info.name)


@asynccontextmanager
async def _serving(
    settings: InferenceSettings,
    telemetry: Telemetry,
    engine: Engine | None,
    fetch: AdapterFetch,
) -> AsyncIterator[RunningInference]:
    slots = adapter_slots(settings, engine, fetch) if engine is not None else None
    server, servicer = await create_server(
        settings.address,
        telemetry,
        engine,
        stream_messages_per_s=settings.stream_messages_per_s,
        security=server_security(settings),
        log_content=settings.telemetry.log_content,
        card=ModelCard(owner=settings.owner, description=settings.description),
        adapter_slots=slots,
    )
    try:
        async with AsyncExitStack() as stack:
            registry = telemetry.metrics_registry
            if registry is not None:
                collector = EngineMetrics()
                registry.register(collector)
                stack.callback(registry.unregister, collector)
            if engine is None:
                engine = await stack.enter_async_context(open_engine(settings))
                slots = adapter_slots(settings, engine, fetch)
                await attach(server, servicer, engine, slots)
                log.info("model loaded", model=engine.model_info.name)
            if slots is not None:
                # Loads still running end before the engine closes.
                stack.push_async_callback(slots.aclose)
            watchdog = asyncio.create_task(
                watch_engine(server, engine, stall_s=settings.engine_stall_s)
            )
            try:
                yield RunningInference(server, engine, watchdog)
            finally:
                failed = watchdog.done()
                # Stopped on purpose: the engine's shutdown is not a failure.
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
                await server.stop(FAILED_ENGINE_GRACE_S if failed else settings.grace_period_s)
    finally:
        await server.stop(0)


def open_engine(settings: InferenceSettings) -> AbstractAsyncContextManager[Engine]:
    """The engine the settings name; vLLM is imported only when it is the one."""
    if settings.engine == "sim":
        from services.inference.sim_engine import open_sim_engine

        return open_sim_engine(settings)
    from services.inference.vllm_engine import open_vllm_engine

    return open_vllm_engine(settings)


async def create_server(
    address: str,
    telemetry: Telemetry,
    engine: Engine | None = None,
    *,
    stream_messages_per_s: float = 0.0,
    security: ServerSecurity | None = None,
    log_content: bool = False,
    card: ModelCard | None = None,
    adapter_slots: AdapterSlots | None = None,
) -> tuple[ServiceServer, InferenceServicer]:
    """Starts the server; NOT_SERVING until an engine is attached with `attach`
    (the factory's first step; tests of the loading state call it alone).
    `log_content`: log each request's prompt and completion (debugging only)."""
    servicer = InferenceServicer(
        engine,
        pacer=StreamPacer(stream_messages_per_s),
        log_content=log_content,
        card=card,
        adapter_slots=adapter_slots,
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


async def attach(
    server: ServiceServer,
    servicer: InferenceServicer,
    engine: Engine,
    adapter_slots: AdapterSlots | None = None,
) -> None:
    """Puts a loaded engine (and its adapter slots) behind the server and reports SERVING."""
    servicer.attach(engine, adapter_slots)
    await server.set_serving(True)


async def watch_engine(server: ServiceServer, engine: Engine, *, stall_s: float) -> str:
    """Waits until the engine dies or wedges; then reports NOT_SERVING on
    every health service, liveness ("") included, for good (a dead engine
    does not come back in this process), and returns why."""
    reason = await wait_engine_failure(engine, stall_s=stall_s)
    log.error("engine failed; this replica no longer serves", reason=reason)
    await server.health.enter_graceful_shutdown()
    return reason
