"""The runner every `python -m` shares: it serves until a shutdown signal, or
until a service that can fail for good has. A real service fails for good
only when its engine dies (tests/e2e/test_inference_service.py kills one in a
real process); FakeFailingService fails on demand."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from observability import Telemetry
from services.common.entrypoint import serve
from services.common.settings import ServiceSettings
from services.common.spec import ServiceSpec

STOPPED: list[str] = []


@dataclass
class FakeFailingService:
    failed: asyncio.Future[str] = field(default_factory=asyncio.Future)

    @property
    def ports(self) -> dict[str, int]:
        return {"port": 0}


@dataclass
class FakeService:
    @property
    def ports(self) -> dict[str, int]:
        return {"port": 0}


@asynccontextmanager
async def failing(settings: ServiceSettings, telemetry: Telemetry) -> AsyncIterator[Any]:
    service = FakeFailingService()
    asyncio.get_running_loop().call_soon(service.failed.set_result, "it broke")
    try:
        yield service
    finally:
        STOPPED.append("failing")


@asynccontextmanager
async def steady(settings: ServiceSettings, telemetry: Telemetry) -> AsyncIterator[Any]:
    # The supervisor's SIGTERM, once the service is up.
    asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)
    try:
        yield FakeService()
    finally:
        STOPPED.append("steady")


def spec(factory: str) -> ServiceSpec[ServiceSettings]:
    return ServiceSpec(
        name="fake",
        module="tests.common.test_entrypoint",
        settings_type=ServiceSettings,
        grpc_services=("maas.v1.Fake",),
        factory=f"tests.common.test_entrypoint:{factory}",
    )


async def test_a_service_that_fails_is_stopped_and_its_reason_returned() -> None:
    assert await serve(spec("failing"), ServiceSettings()) == "it broke"
    assert STOPPED[-1] == "failing"


async def test_a_shutdown_signal_stops_the_service() -> None:
    assert await serve(spec("steady"), ServiceSettings()) is None
    assert STOPPED[-1] == "steady"
