"""`python -m services.router`: the router process."""

from __future__ import annotations

from services.common.entrypoint import run_service
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
    run_service("router", RouterSettings, serve)


if __name__ == "__main__":
    main()
