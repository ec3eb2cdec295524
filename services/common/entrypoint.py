"""What every service's `python -m` entry point does: settings from flags and
env, logging first (before heavy imports), then the service on uvloop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from observability.logging import configure_logging
from services.common.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


def run_service(name: str, settings_type: type[S], serve: Callable[[S], Awaitable[None]]) -> None:
    settings = settings_type.from_cli()
    configure_logging(name, settings.telemetry)
    import uvloop

    # uvloop roughly halves the event loop's own cost per streamed message.
    uvloop.run(serve(settings))  # type: ignore[arg-type]
