"""`python -m services.anomaly`: the event sink and its streaming detectors."""

from __future__ import annotations

from services.anomaly.settings import AnomalySettings
from services.common.entrypoint import run_service


async def serve(settings: AnomalySettings) -> None:
    from observability import setup
    from services.anomaly.actuator import running_policy
    from services.anomaly.core import AnomalyCore
    from services.anomaly.server import create_server
    from services.common.security import channel_security

    telemetry = setup("anomaly", settings.telemetry)
    try:
        core = AnomalyCore(settings)
        async with running_policy(settings.policy, telemetry, core, channel_security(settings)):
            server = await create_server(settings, telemetry, core)
            await server.serve_until_signal(settings.grace_period_s)
    finally:
        telemetry.shutdown()


def main() -> None:
    run_service("anomaly", AnomalySettings, serve)


if __name__ == "__main__":
    main()
