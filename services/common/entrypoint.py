"""What every service's `python -m` entry point does: settings from flags and
env, logging first (before heavy imports), telemetry, then the service's
factory on uvloop until SIGTERM or SIGINT (or, for a service that can fail
for good, until it has)."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

from observability.logging import configure_logging
from services.common.settings import ServiceSettings
from services.common.spec import EXIT_SERVICE_FAILED, FailingService, ServiceSpec


def run_service(spec: ServiceSpec[Any], argv: list[str] | None = None) -> None:
    settings = spec.settings_type.from_cli(argv)
    configure_logging(spec.name, settings.telemetry)
    import uvloop

    # uvloop roughly halves the event loop's own cost per streamed message.
    failure = uvloop.run(serve(spec, settings))
    if failure is not None:
        print(f"{spec.name}: {failure}; exiting for a restart", file=sys.stderr)
        sys.exit(EXIT_SERVICE_FAILED)


async def serve(spec: ServiceSpec[Any], settings: ServiceSettings) -> str | None:
    """Runs the service until a shutdown signal (returns None) or its failure
    (returns why); either way it has stopped within its grace period."""
    # Heavy imports (vLLM, torch, OpenTelemetry) only after logging is configured.
    from observability import setup
    from services.common.serving import wait_for_shutdown_signal

    # Listening from the start: a SIGTERM while the service starts (a model
    # loading) stops it once started, as the supervisor asked.
    shutdown = asyncio.create_task(wait_for_shutdown_signal())
    await asyncio.sleep(0)
    telemetry = setup(spec.name, settings.telemetry)
    try:
        async with spec.load_factory()(settings, telemetry) as running:
            # What start-up made (modules, the model's tables) lives as long as
            # the process: out of the collector's sight it is never scanned
            # again (collection was 2-4% of the gateway's and router's CPU).
            gc.freeze()
            waits: set[asyncio.Future[Any]] = {shutdown}
            failed = None
            if isinstance(running, FailingService):
                failed = asyncio.ensure_future(running.failed)
                waits.add(failed)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if failed is not None and failed.done() and not failed.cancelled():
                return failed.result()
            return None
    finally:
        shutdown.cancel()
        telemetry.shutdown()
