"""The gateway's cache of tenants' adapter names and lists, against a real
registry (auth over SQLite, gRPC on port 0) and a clock the test moves: hits
and misses both hold for the TTL, a forgotten name (and its tenant's list)
is asked again, and the caches keep at most their bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from gateway.adapters import AdapterResolver
from maas.v1 import adapter_registry_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.auth.core import AuthCore
from services.auth.server import serving
from services.auth.settings import AuthSettings
from services.auth.sqlite_store import open_sqlite_store
from services.auth.store import AuthStore
from tests.auth.conftest import ADMIN_TOKEN, PEPPER
from tests.auth.test_adapters import safetensors, stream, upload

TTL_S = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def registry(
    tmp_path: Path,
) -> AsyncIterator[tuple[AuthStore, adapter_registry_pb2_grpc.AdapterRegistryAsyncStub]]:
    settings = AuthSettings(
        port=0, admin_token=ADMIN_TOKEN, key_pepper=PEPPER.decode(), database_path=tmp_path / "a"
    )
    telemetry = setup("auth", TelemetrySettings())
    async with (
        open_sqlite_store(tmp_path / "auth.db") as store,
        serving(settings, telemetry, store=store) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield store, adapter_registry_pb2_grpc.AdapterRegistryStub(channel)
    telemetry.shutdown()


async def test_resolutions_hold_for_their_ttl_and_the_cache_is_bounded(
    registry: tuple[AuthStore, adapter_registry_pb2_grpc.AdapterRegistryAsyncStub],
) -> None:
    store, stub = registry
    tenant = (await AuthCore(store, PEPPER).create_tenant("a")).tenant_id
    clock = Clock()
    resolver = AdapterResolver(
        stub, ttl_s=TTL_S, max_entries=2, max_lists=2, lookup_timeout_s=3.0, clock=clock
    )
    assert await resolver.resolve(tenant, "my-lora", None) is None
    created = await stub.CreateAdapter(stream(upload(tenant, safetensors(16))))
    # The miss holds for its TTL, as a hit would.
    assert await resolver.resolve(tenant, "my-lora", None) is None
    clock.now += TTL_S
    assert await resolver.resolve(tenant, "my-lora", None) == created
    # Deleted behind the cache's back: still found until the TTL passes...
    await store.delete_adapter(tenant, "my-lora")
    assert await resolver.resolve(tenant, "my-lora", None) == created
    # ...or until this gateway forgets it (it does on its own create and delete).
    resolver.forget(tenant, "my-lora")
    assert await resolver.resolve(tenant, "my-lora", None) is None
    # Made-up names fill the cache no further than its bound.
    for name in ("x1", "x2", "x3", "x4"):
        assert await resolver.resolve(tenant, name, None) is None
    assert len(resolver) == 2


async def test_a_tenants_list_holds_for_its_ttl_until_this_gateway_changes_it(
    registry: tuple[AuthStore, adapter_registry_pb2_grpc.AdapterRegistryAsyncStub],
) -> None:
    store, stub = registry
    core = AuthCore(store, PEPPER)
    tenant, other = [(await core.create_tenant(n)).tenant_id for n in ("a", "b")]
    clock = Clock()
    resolver = AdapterResolver(
        stub, ttl_s=TTL_S, max_entries=2, max_lists=1, lookup_timeout_s=3.0, clock=clock
    )
    assert await resolver.adapters(tenant, None) == ()
    # Created behind the cache's back (another gateway): listed once the TTL passes.
    created = await stub.CreateAdapter(stream(upload(tenant, safetensors(16))))
    assert await resolver.adapters(tenant, None) == ()
    clock.now += TTL_S
    assert await resolver.adapters(tenant, None) == (created,)
    # Deleted behind its back: still listed, until this gateway forgets the
    # tenant's adapter (it does on its own create and delete).
    await store.delete_adapter(tenant, "my-lora")
    assert await resolver.adapters(tenant, None) == (created,)
    resolver.forget(tenant, "my-lora")
    assert await resolver.adapters(tenant, None) == ()
    # One list kept: another tenant's pushes it out.
    assert await resolver.adapters(other, None) == ()
    await stub.CreateAdapter(stream(upload(tenant, safetensors(16))))
    assert len(await resolver.adapters(tenant, None)) == 1
