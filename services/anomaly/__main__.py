"""`python -m services.anomaly`: the event sink and (later) detectors."""

from __future__ import annotations

import asyncio

from observability.logging import configure_logging
from services.anomaly.settings import AnomalySettings


async def serve(settings: AnomalySettings) -> None:
    from observability import setup
    from services.anomaly.core import AnomalyCore
    from services.anomaly.server import create_server
    from services.common.serving import wait_for_shutdown_signal

    telemetry = setup("anomaly", settings.telemetry)
    try:
        server = await create_server(settings, telemetry, AnomalyCore())
        try:
            await wait_for_shutdown_signal()
        finally:
            await server.stop(settings.grace_period_s)
    finally:
        telemetry.shutdown()


def main() -> None:
    settings = AnomalySettings.from_cli()
    configure_logging("anomaly", settings.telemetry)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
