"""Builds the auth service: maas.v1.Auth, Metering, Billing and AdapterRegistry over its store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from maas.v1 import (
    adapter_registry_pb2,
    adapter_registry_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
)
from observability import Telemetry
from services.auth.adapter_servicer import AdapterRegistryServicer
from services.auth.adapters import Adapters, AdapterSettings
from services.auth.billing import BillingCore, Budgets
from services.auth.billing_servicer import BILLING_RPCS, BillingServicer
from services.auth.core import AuthCore, MeteringCore
from services.auth.quota import Quotas
from services.auth.quota_state import QuotaState
from services.auth.restrictions import Restrictions
from services.auth.servicer import ADMIN_RPCS, AdminGuard, AuthServicer, MeteringServicer
from services.auth.settings import AuthSettings
from services.auth.store import AuthStore
from services.common.security import server_security
from services.common.serving import RunningServer, ServiceServer, start_server

AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["Auth"].full_name
METERING_SERVICE = metering_pb2.DESCRIPTOR.services_by_name["Metering"].full_name
BILLING_SERVICE = billing_pb2.DESCRIPTOR.services_by_name["Billing"].full_name
ADAPTER_REGISTRY_SERVICE = adapter_registry_pb2.DESCRIPTOR.services_by_name[
    "AdapterRegistry"
].full_name
ADMIN_METHODS = frozenset(f"/{AUTH_SERVICE}/{rpc}" for rpc in ADMIN_RPCS) | frozenset(
    f"/{BILLING_SERVICE}/{rpc}" for rpc in BILLING_RPCS
)


@asynccontextmanager
async def serving(
    settings: AuthSettings, telemetry: Telemetry, *, store: AuthStore | None = None
) -> AsyncIterator[RunningServer]:
    """Serves `store` (default: opened from settings, PostgreSQL when
    `database_url` is set, else SQLite) with quota state in Redis when
    `quota_url` is set, else in memory; ready (SERVING) as soon as it starts.
    On exit stops taking calls and finishes those in flight before the store closes."""
    async with AsyncExitStack() as stack:
        if store is None:
            store = await stack.enter_async_context(_open_store(settings))
        state: QuotaState | None = None
        if settings.quota_url:
            from services.auth.redis_quota import open_redis_quota_state

            state = await stack.enter_async_context(open_redis_quota_state(settings.quota_url))
        server = await _start_server(settings, telemetry, store, state)
        try:
            yield RunningServer(server)
        finally:
            await server.stop(settings.grace_period_s)


def _open_store(settings: AuthSettings) -> AbstractAsyncContextManager[AuthStore]:
    if settings.database_url:
        from services.auth.postgres_store import open_postgres_store

        return open_postgres_store(settings.database_url)
    from services.auth.sqlite_store import open_sqlite_store

    return open_sqlite_store(settings.database_path)


async def _start_server(
    settings: AuthSettings, telemetry: Telemetry, store: AuthStore, state: QuotaState | None
) -> ServiceServer:
    core = AuthCore(
        store,
        settings.key_pepper.get_secret_value().encode(),
        default_plan=settings.default_plan.plan(),
    )
    restrictions = Restrictions(store, shared=state)
    await restrictions.load()
    guard = AdminGuard(settings.admin_token.get_secret_value(), core)
    auth = AuthServicer(
        core,
        guard,
        Quotas(
            store,
            lease_s=settings.reservation_lease_s,
            restrictions=restrictions,
            idempotency_retention_s=settings.idempotency_retention_s,
            state=state,
        ),
        restrictions,
    )
    billing = BillingCore(store)
    metering = MeteringServicer(MeteringCore(store), billing)
    billing_servicer = BillingServicer(billing, guard, Budgets(store))
    registry = AdapterRegistryServicer(
        Adapters(
            store,
            AdapterSettings(
                max_bytes=settings.max_adapter_bytes,
                max_rank=settings.max_adapter_rank,
                max_per_tenant=settings.max_adapters_per_tenant,
                max_uploads=settings.max_adapter_uploads,
                max_uploads_per_tenant=settings.max_adapter_uploads_per_tenant,
            ),
        )
    )
    return await start_server(
        address=settings.address,
        telemetry=telemetry,
        service_names=[AUTH_SERVICE, METERING_SERVICE, BILLING_SERVICE, ADAPTER_REGISTRY_SERVICE],
        registrars=[
            lambda s: auth_pb2_grpc.add_AuthServicer_to_server(auth, s),
            lambda s: metering_pb2_grpc.add_MeteringServicer_to_server(metering, s),
            lambda s: billing_pb2_grpc.add_BillingServicer_to_server(billing_servicer, s),
            lambda s: adapter_registry_pb2_grpc.add_AdapterRegistryServicer_to_server(registry, s),
        ],
        security=server_security(settings, self_guarded=ADMIN_METHODS),
    )
