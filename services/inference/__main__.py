"""`python -m services.inference --model PATH`: one engine, one replica."""

from __future__ import annotations

import asyncio
import sys

from services.common.entrypoint import run_service
from services.inference.settings import InferenceSettings
from services.inference.watchdog import EXIT_ENGINE_FAILED, EngineFailedError

# Time the health watchers (the router) have to read NOT_SERVING before a
# failed replica's server goes; its streams have failed already, or are stuck.
FAILED_ENGINE_GRACE_S = 1.0


async def serve(settings: InferenceSettings) -> None:
    # Heavy imports (vLLM, torch) only after logging is configured.
    import structlog

    from observability import setup
    from services.common.security import server_security
    from services.common.serving import wait_for_shutdown_signal
    from services.inference.server import attach, create_server, watch_engine
    from services.inference.vllm_engine import open_vllm_engine

    log = structlog.get_logger("inference")
    telemetry = setup("inference", settings.telemetry)
    # The server is up (health NOT_SERVING) while the model loads, so probes see progress.
    server, servicer = await create_server(
        settings.address,
        telemetry,
        stream_messages_per_s=settings.stream_messages_per_s,
        security=server_security(settings),
        log_content=settings.telemetry.log_content,
    )
    shutdown = asyncio.create_task(wait_for_shutdown_signal())
    try:
        async with open_vllm_engine(settings) as engine:
            await attach(server, servicer, engine)
            log.info("model loaded", model=engine.model_info.name)
            failure = asyncio.create_task(
                watch_engine(server, engine, stall_s=settings.engine_stall_s)
            )
            await asyncio.wait({shutdown, failure}, return_when=asyncio.FIRST_COMPLETED)
            if failure.done():
                await server.stop(FAILED_ENGINE_GRACE_S)
                raise EngineFailedError(failure.result())
            # Stopped on purpose: the engine's shutdown is not a failure.
            failure.cancel()
            await asyncio.gather(failure, return_exceptions=True)
            await server.stop(settings.grace_period_s)
    finally:
        shutdown.cancel()
        await server.stop(0)
        telemetry.shutdown()


def main() -> None:
    try:
        run_service("inference", InferenceSettings, serve)
    except EngineFailedError as err:
        print(f"inference: the engine failed ({err}); exiting for a restart", file=sys.stderr)
        # Non-zero, so a supervisor (compose, Kubernetes, `make run`) restarts it.
        sys.exit(EXIT_ENGINE_FAILED)


if __name__ == "__main__":
    main()
