"""Fixtures of the anomaly tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from observability import Telemetry, setup
from observability.settings import TelemetrySettings


@pytest_asyncio.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    tel = setup("anomaly", TelemetrySettings())
    yield tel
    tel.shutdown()
