"""The e2e folder's fixtures: a fresh PostgreSQL database on the session's
server, as several auth replicas' one truth."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from tests.auth.conftest import postgres_dsn  # noqa: F401 (the session's PostgreSQL)


@pytest_asyncio.fixture
async def shared_database(postgres_dsn: str) -> AsyncIterator[str]:  # noqa: F811
    """The URL of a new database, dropped after the test."""
    name = f"replicas_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()
