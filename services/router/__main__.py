"""`python -m services.router`: the router process."""

from __future__ import annotations

import asyncio

from observability.logging import configure_logging
from services.router.settings import RouterSettings


async def serve(settings: RouterSettings) -> None:
    from observability import setup
    from services.common.serving import wait_for_shutdown_signal
    from services.router.replicas import ReplicaSet
    from services.router.server import running_router

    telemetry = setup("router", settings.telemetry)
    replicas = ReplicaSet(
        settings.replicas,
        telemetry,
        retry_initial_s=settings.health_retry_initial_s,
        retry_max_s=settings.health_retry_max_s,
    )
    await replicas.start()
    try:
        async with running_router(settings.address, telemetry, replicas, settings.grace_period_s):
            await wait_for_shutdown_signal()
    finally:
        await replicas.aclose()
        telemetry.shutdown()


def main() -> None:
    settings = RouterSettings.from_cli()
    configure_logging("router", settings.telemetry)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
