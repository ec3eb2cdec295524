"""Who may administer what, and the plan a new tenant gets: over the real auth
server (SQLite and PostgreSQL) and its core.

The operator token runs every admin rpc for every tenant; an API key with the
`admin` scope administers its own tenant and is PERMISSION_DENIED anything
else. A tenant created without a plan gets the finite default plan."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from pydantic import ValidationError

from maas.v1 import auth_pb2, auth_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.auth.core import AuthCore
from services.auth.models import DEFAULT_PLAN, Plan
from services.auth.server import serving
from services.auth.settings import AuthSettings, DefaultPlanSettings
from services.auth.store import AuthStore
from tests.auth.conftest import ADMIN_TOKEN, PEPPER

OPERATOR = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
Metadata = tuple[tuple[str, str], ...]


def bearer(api_key: str) -> Metadata:
    return (("authorization", f"Bearer {api_key}"),)


async def test_a_tenant_created_without_a_plan_gets_the_finite_default(
    auth_core: AuthCore,
) -> None:
    tenant = await auth_core.create_tenant("acme")
    assert tenant.plan == DEFAULT_PLAN
    limits = (
        DEFAULT_PLAN.requests_per_minute,
        DEFAULT_PLAN.tokens_per_minute,
        DEFAULT_PLAN.max_concurrent_requests,
        DEFAULT_PLAN.monthly_token_budget,
    )
    assert all(limit > 0 for limit in limits)  # 0 would mean unlimited
    [listed] = await auth_core.list_tenants()
    assert listed.plan == DEFAULT_PLAN


async def test_a_plan_given_at_creation_is_taken_as_is(auth_core: AuthCore) -> None:
    generous = Plan(requests_per_minute=10_000)
    assert (await auth_core.create_tenant("big", plan=generous)).plan == generous
    assert (await auth_core.create_tenant("free", plan=Plan())).plan == Plan()


async def test_create_tenant_applies_the_default_unless_a_plan_is_sent(
    auth_channel: grpc.aio.Channel,
) -> None:
    stub = auth_pb2_grpc.AuthStub(auth_channel)
    plain = await stub.CreateTenant(auth_pb2.CreateTenantRequest(name="a"), metadata=OPERATOR)
    assert plain.plan.requests_per_minute == DEFAULT_PLAN.requests_per_minute
    assert plain.plan.tokens_per_minute == DEFAULT_PLAN.tokens_per_minute
    assert plain.plan.max_concurrent_requests == DEFAULT_PLAN.max_concurrent_requests
    assert plain.plan.monthly_token_budget == DEFAULT_PLAN.monthly_token_budget
    unlimited = await stub.CreateTenant(
        auth_pb2.CreateTenantRequest(name="b", plan=auth_pb2.Plan()), metadata=OPERATOR
    )
    assert unlimited.plan == auth_pb2.Plan()


async def test_the_default_plan_is_a_setting(store: AuthStore, tmp_path: Path) -> None:
    settings = AuthSettings(
        port=0,
        admin_token=ADMIN_TOKEN,
        key_pepper=PEPPER.decode(),
        database_path=tmp_path / "auth.db",
        default_plan=DefaultPlanSettings(requests_per_minute=5, max_concurrent_requests=1),
    )
    telemetry = setup("auth", TelemetrySettings())
    try:
        async with (
            serving(settings, telemetry, store=store) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            tenant = await auth_pb2_grpc.AuthStub(channel).CreateTenant(
                auth_pb2.CreateTenantRequest(name="small"), metadata=OPERATOR
            )
    finally:
        telemetry.shutdown()
    assert tenant.plan.requests_per_minute == 5
    assert tenant.plan.max_concurrent_requests == 1
    assert tenant.plan.tokens_per_minute == DEFAULT_PLAN.tokens_per_minute


def test_the_default_plan_cannot_be_unlimited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_AUTH_DEFAULT_PLAN__TOKENS_PER_MINUTE", "0")
    with pytest.raises(ValidationError, match=r"default_plan\.tokens_per_minute"):
        AuthSettings(admin_token=ADMIN_TOKEN, key_pepper=PEPPER.decode())


class TwoTenants:
    """Tenants A and B, each with a plain key; A also has an admin-scoped key."""

    def __init__(self, stub: auth_pb2_grpc.AuthAsyncStub) -> None:
        self.stub = stub

    async def make(self) -> TwoTenants:
        stub = self.stub
        self.a = await stub.CreateTenant(auth_pb2.CreateTenantRequest(name="a"), metadata=OPERATOR)
        self.b = await stub.CreateTenant(auth_pb2.CreateTenantRequest(name="b"), metadata=OPERATOR)
        self.a_admin = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=self.a.tenant_id, scopes=["admin"]),
            metadata=OPERATOR,
        )
        self.a_key = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=self.a.tenant_id), metadata=OPERATOR
        )
        self.b_key = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=self.b.tenant_id), metadata=OPERATOR
        )
        return self


async def two_tenants(channel: grpc.aio.Channel) -> TwoTenants:
    return await TwoTenants(auth_pb2_grpc.AuthStub(channel)).make()


Call = Callable[["auth_pb2_grpc.AuthAsyncStub", TwoTenants, Metadata], Awaitable[Any]]


def restrict(tenant_id: str) -> auth_pb2.RestrictRequest:
    return auth_pb2.RestrictRequest(
        tenant_id=tenant_id,
        action=auth_pb2.RESTRICTION_ACTION_SUSPEND,
        duration=duration_pb2.Duration(seconds=60),
        reason="test",
        actor="test",
    )


# What a tenant's admin key may not do: another tenant's business, or the mesh's.
FORBIDDEN: dict[str, Call] = {
    "create a key for another tenant": lambda s, t, md: s.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(tenant_id=t.b.tenant_id, scopes=["admin"]), metadata=md
    ),
    "list another tenant's keys": lambda s, t, md: s.ListApiKeys(
        auth_pb2.ListApiKeysRequest(tenant_id=t.b.tenant_id), metadata=md
    ),
    "revoke another tenant's key": lambda s, t, md: s.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(key_id=t.b_key.key.key_id), metadata=md
    ),
    "list another tenant's restrictions": lambda s, t, md: s.ListRestrictions(
        auth_pb2.ListRestrictionsRequest(tenant_id=t.b.tenant_id), metadata=md
    ),
    "list every tenant's restrictions": lambda s, t, md: s.ListRestrictions(
        auth_pb2.ListRestrictionsRequest(), metadata=md
    ),
    "read another tenant's audit trail": lambda s, t, md: s.ListAuditRecords(
        auth_pb2.ListAuditRecordsRequest(tenant_id=t.b.tenant_id), metadata=md
    ),
    "create a tenant": lambda s, t, md: s.CreateTenant(
        auth_pb2.CreateTenantRequest(name="c"), metadata=md
    ),
    "list tenants": lambda s, t, md: s.ListTenants(auth_pb2.ListTenantsRequest(), metadata=md),
    "set its own plan": lambda s, t, md: s.SetPlan(
        auth_pb2.SetPlanRequest(tenant_id=t.a.tenant_id, plan=auth_pb2.Plan()), metadata=md
    ),
    "set another tenant's plan": lambda s, t, md: s.SetPlan(
        auth_pb2.SetPlanRequest(tenant_id=t.b.tenant_id, plan=auth_pb2.Plan()), metadata=md
    ),
    "restrict another tenant": lambda s, t, md: s.Restrict(restrict(t.b.tenant_id), metadata=md),
    "lift a restriction": lambda s, t, md: s.LiftRestriction(
        auth_pb2.LiftRestrictionRequest(restriction_id="r1", actor="a"), metadata=md
    ),
}


@pytest.mark.parametrize("case", list(FORBIDDEN))
async def test_a_tenants_admin_key_is_refused_beyond_its_tenant(
    auth_channel: grpc.aio.Channel, case: str
) -> None:
    t = await two_tenants(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await FORBIDDEN[case](t.stub, t, bearer(t.a_admin.api_key))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    # The operator may do the same (LiftRestriction's id is made up: NOT_FOUND, not refused).
    try:
        await FORBIDDEN[case](t.stub, t, OPERATOR)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND and case == "lift a restriction"


async def test_a_tenants_admin_key_administers_its_own_tenant(
    auth_channel: grpc.aio.Channel,
) -> None:
    t = await two_tenants(auth_channel)
    stub, md = t.stub, bearer(t.a_admin.api_key)
    made = await stub.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(tenant_id=t.a.tenant_id, name="ci"), metadata=md
    )
    listed = await stub.ListApiKeys(
        auth_pb2.ListApiKeysRequest(tenant_id=t.a.tenant_id), metadata=md
    )
    assert made.key.key_id in {k.key_id for k in listed.keys}
    assert t.b_key.key.key_id not in {k.key_id for k in listed.keys}
    await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=t.a_key.key.key_id), metadata=md)
    await stub.ListRestrictions(
        auth_pb2.ListRestrictionsRequest(tenant_id=t.a.tenant_id), metadata=md
    )
    await stub.ListAuditRecords(
        auth_pb2.ListAuditRecordsRequest(tenant_id=t.a.tenant_id), metadata=md
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=t.a_key.api_key))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_refused_revocation_leaves_the_other_tenants_key_working(
    auth_channel: grpc.aio.Channel,
) -> None:
    t = await two_tenants(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError):
        await t.stub.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(key_id=t.b_key.key.key_id),
            metadata=bearer(t.a_admin.api_key),
        )
    b = await t.stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=t.b_key.api_key))
    assert b.tenant_id == t.b.tenant_id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await t.stub.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(key_id="nosuchkey"), metadata=bearer(t.a_admin.api_key)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_key_without_the_admin_scope_administers_nothing(
    auth_channel: grpc.aio.Channel,
) -> None:
    t = await two_tenants(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await t.stub.ListApiKeys(
            auth_pb2.ListApiKeysRequest(tenant_id=t.a.tenant_id), metadata=bearer(t.a_key.api_key)
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'admin' scope" in (info.value.details() or "")
