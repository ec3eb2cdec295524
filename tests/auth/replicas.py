"""Real auth processes (`python -m services.auth`) sharing one PostgreSQL
database and one Redis: the replicas a scaled-out mesh runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.auth.conftest import ADMIN_TOKEN, PEPPER, REPO
from tests.support import free_port

# A replica imports the mesh and opens its pools in a few seconds; a minute
# is a hang, not a slow start.
START_TIMEOUT_S = 60.0


@asynccontextmanager
async def postgres_database(dsn: str) -> AsyncIterator[str]:
    """A fresh database on the server at `dsn`, dropped afterwards; yields its DSN."""
    name = f"replicas_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield dsn.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@asynccontextmanager
async def auth_replica(database_url: str, quota_url: str) -> AsyncIterator[grpc.aio.Channel]:
    port = free_port()
    env = dict(
        os.environ,
        MAAS_AUTH_ADMIN_TOKEN=ADMIN_TOKEN,
        MAAS_AUTH_KEY_PEPPER=PEPPER.decode(),
        MAAS_AUTH_TELEMETRY__LOG_LEVEL="WARNING",
    )
    args = ["--port", str(port), "--database-url", database_url, "--quota-url", quota_url]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.auth", *args,
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="maas.v1.Auth")
        async for update in health.Watch(request, wait_for_ready=True, timeout=START_TIMEOUT_S):
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                break
        yield channel
    finally:
        await channel.close()
        process.terminate()
        await process.wait()


@asynccontextmanager
async def auth_replicas(
    count: int, database_url: str, quota_url: str
) -> AsyncIterator[list[grpc.aio.Channel]]:
    """`count` replicas: the first alone (it creates the schema in the fresh
    database; replicas racing to create it would collide), the rest side by side."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(auth_replica(database_url, quota_url))
        rest = await asyncio.gather(
            *(
                stack.enter_async_context(auth_replica(database_url, quota_url))
                for _ in range(count - 1)
            )
        )
        yield [first, *rest]
