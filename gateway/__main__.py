"""`python -m gateway`: the public gateway process."""

from __future__ import annotations

from gateway.settings import GatewaySettings
from services.common.entrypoint import run_service


async def serve(settings: GatewaySettings) -> None:
    from gateway.server import running_gateway
    from observability import setup
    from services.common.serving import wait_for_shutdown_signal

    telemetry = setup("gateway", settings.telemetry)
    try:
        async with running_gateway(settings, telemetry):
            await wait_for_shutdown_signal()
    finally:
        telemetry.shutdown()


def main() -> None:
    run_service("gateway", GatewaySettings, serve)


if __name__ == "__main__":
    main()
