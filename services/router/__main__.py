"""`python -m services.router`: the router process."""

from __future__ import annotations

from services.common.entrypoint import run_service
from services.router.settings import RouterSettings


async def serve(settings: RouterSettings) -> None:
    from observability import setup
    from services.common.security import channel_security, server_security
    from services.common.serving import wait_for_shutdown_signal
    from services.router.dispatcher import FlowPolicy
    from services.router.limiter import GradientLimiter
    from services.router.replicas import EjectionPolicy, ReplicaSet
    from services.router.server import running_router

    telemetry = setup("router", settings.telemetry)
    replicas = ReplicaSet(
        settings.replicas,
        telemetry,
        retry_initial_s=settings.health_retry_initial_s,
        retry_max_s=settings.health_retry_max_s,
        ejection=EjectionPolicy(
            settings.ejection_failures, settings.ejection_base_s, settings.ejection_max_s
        ),
        limiter=lambda: GradientLimiter(
            initial=settings.initial_concurrency, tolerance=settings.latency_tolerance
        ),
        security=channel_security(settings),
    )
    policy = FlowPolicy(
        max_queue=settings.max_queue,
        max_queue_per_tenant=settings.max_queue_per_tenant,
        aging_s=settings.aging_s,
        max_queue_wait_s=settings.max_queue_wait_s,
        affinity_slack=settings.affinity_slack,
        choice=settings.replica_choice,
        reserved_share=settings.reserved_share,
        tenant_memory_s=settings.tenant_memory_s,
    )
    await replicas.start()
    try:
        async with running_router(
            settings.address,
            telemetry,
            replicas,
            settings.grace_period_s,
            policy=policy,
            max_attempts=settings.max_attempts,
            security=server_security(settings),
        ):
            await wait_for_shutdown_signal()
    finally:
        await replicas.aclose()
        telemetry.shutdown()


def main() -> None:
    run_service("router", RouterSettings, serve)


if __name__ == "__main__":
    main()
