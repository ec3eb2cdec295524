"""`python -m services.inference --model PATH`: one engine, one replica."""

from __future__ import annotations

import asyncio

from services.common.entrypoint import run_service
from services.inference.settings import InferenceSettings


async def serve(settings: InferenceSettings) -> None:
    # Heavy imports (vLLM, torch) only after logging is configured.
    import structlog

    from observability import setup
    from services.common.security import server_security
    from services.common.serving import wait_for_shutdown_signal
    from services.inference.server import attach, create_server
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
            await shutdown
            await server.stop(settings.grace_period_s)
    finally:
        shutdown.cancel()
        await server.stop(0)
        telemetry.shutdown()


def main() -> None:
    run_service("inference", InferenceSettings, serve)


if __name__ == "__main__":
    main()
