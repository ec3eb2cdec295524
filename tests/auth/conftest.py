"""Auth over a real SQLite file and, for the service tests, a real gRPC server."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from observability import setup
from observability.settings import TelemetrySettings
from services.auth.core import AuthCore, MeteringCore
from services.auth.postgres_store import open_postgres_store
from services.auth.quota_state import MemoryQuotaState, QuotaState
from services.auth.redis_quota import RedisQuotaState, redis_client
from services.auth.server import serving
from services.auth.settings import AuthSettings
from services.auth.sqlite_store import open_sqlite_store
from services.auth.store import AuthStore

REPO = Path(__file__).resolve().parents[2]
# Both at least MIN_SECRET_LENGTH characters, as auth requires.
PEPPER = b"test-pepper-0123456789abcdef0123456789"
ADMIN_TOKEN = "test-operator-token-0123456789abcdef"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A real PostgreSQL on loopback, installed and started by the test run."""
    out = subprocess.run(
        ["bash", str(REPO / "deploy" / "local" / "postgres.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AuthStore]:
    """The same store tests run against both backends; each test gets an empty store."""
    if request.param == "sqlite":
        async with open_sqlite_store(tmp_path / "auth.db") as opened:
            yield opened
        return
    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"test_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        async with open_postgres_store(dsn, schema=schema) as opened:
            yield opened
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


@pytest_asyncio.fixture
async def auth_core(store: AuthStore) -> AuthCore:
    return AuthCore(store, PEPPER)


@pytest_asyncio.fixture
async def metering_core(store: AuthStore) -> MeteringCore:
    return MeteringCore(store)


@pytest_asyncio.fixture
async def auth_channel(store: AuthStore, tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    settings = AuthSettings(
        port=0,
        admin_token=ADMIN_TOKEN,
        key_pepper=PEPPER.decode(),
        database_path=tmp_path / "auth.db",
    )
    telemetry = setup("auth", TelemetrySettings())
    async with (
        serving(settings, telemetry, store=store) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield channel
    telemetry.shutdown()


class QuotaStates:
    """Makes the quota state a test's Quotas run on: this process's memory, or
    a real Redis under a key prefix of the test's own. `forget()` loses what
    the state held, as a restart of auth does in memory (in Redis: the state's
    data lost, a new prefix); every state made after it shares the new one."""

    def __init__(self, kind: str, client: aioredis.Redis | None) -> None:
        self.kind = kind
        self._client = client
        self._prefix = ""
        self.forget()

    def forget(self) -> None:
        self._prefix = f"maas:quota:test-{uuid.uuid4().hex}"

    def __call__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> QuotaState:
        if self._client is None:
            return MemoryQuotaState(clock=clock, wall=wall)
        return RedisQuotaState(self._client, prefix=self._prefix, clock=clock, wall=wall)


@pytest_asyncio.fixture(params=["memory", "redis"])
async def quota_states(request: pytest.FixtureRequest) -> AsyncIterator[QuotaStates]:
    """The same quota tests run against both states."""
    if request.param == "memory":
        yield QuotaStates("memory", None)
        return
    client = redis_client(request.getfixturevalue("redis_url"))
    try:
        yield QuotaStates("redis", client)
    finally:
        await client.aclose()
