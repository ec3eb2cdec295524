"""`python -m services.console`: the web console process."""

from __future__ import annotations

import asyncio
import sys

from observability.logging import configure_logging
from services.console.settings import ConsoleSettings


async def _serve(settings: ConsoleSettings) -> None:
    from observability import setup
    from services.common.serving import wait_for_shutdown_signal
    from services.console.server import serving

    shutdown = asyncio.create_task(wait_for_shutdown_signal())
    telemetry = setup("console", settings.telemetry)
    try:
        async with serving(settings, telemetry) as running:
            print(f"console: http://{settings.host}:{running.port}", file=sys.stderr, flush=True)
            await shutdown
    finally:
        telemetry.shutdown()


def main(argv: list[str] | None = None) -> None:
    settings = ConsoleSettings.from_cli(argv)
    # Logging first, before heavy imports (STYLE.md 8).
    configure_logging("console", settings.telemetry)
    import uvloop

    uvloop.run(_serve(settings))


if __name__ == "__main__":
    main()
