"""Auth over a real SQLite file and, for the service tests, a real gRPC server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from observability import setup
from observability.settings import TelemetrySettings
from services.auth.core import AuthCore, MeteringCore
from services.auth.server import create_server
from services.auth.settings import AuthSettings
from services.auth.sqlite_store import SqliteAuthStore, open_sqlite_store

PEPPER = b"test-pepper"
ADMIN_TOKEN = "test-admin-token"


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteAuthStore]:
    async with open_sqlite_store(tmp_path / "auth.db") as opened:
        yield opened


@pytest_asyncio.fixture
async def auth_core(store: SqliteAuthStore) -> AuthCore:
    return AuthCore(store, PEPPER)


@pytest_asyncio.fixture
async def metering_core(store: SqliteAuthStore) -> MeteringCore:
    return MeteringCore(store)


@pytest_asyncio.fixture
async def auth_channel(store: SqliteAuthStore, tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    settings = AuthSettings(
        port=0,
        admin_token=ADMIN_TOKEN,
        key_pepper=PEPPER.decode(),
        database_path=tmp_path / "auth.db",
    )
    telemetry = setup("auth", TelemetrySettings())
    server = await create_server(settings, telemetry, store)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel
    await server.stop(0)
    telemetry.shutdown()
