"""Hostile callers against authentication and administration, on the real mesh.

A flood of made-up keys costs auth at most one lookup per distinct key per
negative-cache window, and a replayed bad key costs none; a tenant's
admin-scoped key cannot touch another tenant. Each runs beside a well-behaved
tenant that must complete every request and be billed exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import grpc
import pytest
from google.protobuf import duration_pb2
from opentelemetry.sdk.trace import ReadableSpan

from maas.v1 import auth_pb2, auth_pb2_grpc, gateway_pb2_grpc, generation_pb2
from services.auth.keys import new_key
from tests.hostile.conftest import Mesh, TenantFactory, bystander

AUTHENTICATE = "/maas.v1.Auth/Authenticate"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]
# Distinct made-up keys in the flood (all at once), and how often each is sent.
KEYS = 40
COPIES = 3


def refused_lookups(mesh: Mesh) -> int:
    """Authenticate calls auth answered UNAUTHENTICATED, from auth's own spans."""
    spans: Sequence[ReadableSpan] = mesh.spans["auth"].get_finished_spans()
    return sum(
        1
        for s in spans
        if s.name == AUTHENTICATE
        and (s.attributes or {}).get("rpc.grpc.status_code") == UNAUTHENTICATED
    )


async def generate_with(stub: gateway_pb2_grpc.GatewayAsyncStub, mesh: Mesh, key: str) -> None:
    """One Generate with `key`; the gateway must refuse it UNAUTHENTICATED."""
    call = stub.Generate(
        generation_pb2.GenerateRequest(model=mesh.model, prompt="hi", max_tokens=4),
        metadata=(("authorization", f"Bearer {key}"),),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_flood_of_made_up_keys_costs_auth_one_lookup_per_key(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    keys = [new_key()[0] for _ in range(KEYS)]  # well formed: each costs auth a store lookup
    before = refused_lookups(mesh)
    async with (
        bystander(mesh, await new_tenant()),
        grpc.aio.insecure_channel(mesh.gateway) as channel,
    ):
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def send_copies(key: str) -> None:
            for _ in range(COPIES):  # one after another: a copy never shares a lookup in flight
                await generate_with(stub, mesh, key)

        await asyncio.gather(*(send_copies(key) for key in keys))
        # Each key was asked about once: its later copies found the refusal
        # cached (the window outlasts the flood).
        assert refused_lookups(mesh) - before == KEYS

        # A bad key replayed inside its window is refused without asking auth.
        replayed = new_key()[0]
        await generate_with(stub, mesh, replayed)
        asked = refused_lookups(mesh)
        for _ in range(20):
            await generate_with(stub, mesh, replayed)
        assert refused_lookups(mesh) == asked


def suspend(tenant_id: str) -> auth_pb2.RestrictRequest:
    return auth_pb2.RestrictRequest(
        tenant_id=tenant_id,
        action=auth_pb2.RESTRICTION_ACTION_SUSPEND,
        duration=duration_pb2.Duration(seconds=600),
        reason="hostile",
        actor="tenant-a",
    )


async def test_an_admin_key_of_one_tenant_cannot_touch_another(
    mesh: Mesh, new_tenant: TenantFactory
) -> None:
    attacker = await new_tenant()
    victim = await new_tenant()
    operator = (("authorization", f"Bearer {mesh.admin_token}"),)
    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as channel:
        auth = auth_pb2_grpc.AuthStub(channel)
        admin_key = await auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=attacker.tenant_id, scopes=["admin"]),
            metadata=operator,
        )
        victim_keys = await auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(tenant_id=victim.tenant_id), metadata=operator
        )
        as_attacker = (("authorization", f"Bearer {admin_key.api_key}"),)
        async with bystander(mesh, victim):
            attacks: dict[str, Awaitable[object]] = {
                "revoke its key": auth.RevokeApiKey(
                    auth_pb2.RevokeApiKeyRequest(key_id=victim_keys.keys[0].key_id),
                    metadata=as_attacker,
                ),
                "cut its plan": auth.SetPlan(
                    auth_pb2.SetPlanRequest(
                        tenant_id=victim.tenant_id, plan=auth_pb2.Plan(requests_per_minute=1)
                    ),
                    metadata=as_attacker,
                ),
                "suspend it": auth.Restrict(suspend(victim.tenant_id), metadata=as_attacker),
                "mint itself a key there": auth.CreateApiKey(
                    auth_pb2.CreateApiKeyRequest(tenant_id=victim.tenant_id), metadata=as_attacker
                ),
                "list its keys": auth.ListApiKeys(
                    auth_pb2.ListApiKeysRequest(tenant_id=victim.tenant_id), metadata=as_attacker
                ),
                "list every tenant": auth.ListTenants(
                    auth_pb2.ListTenantsRequest(), metadata=as_attacker
                ),
            }
            outcomes = await asyncio.gather(*attacks.values(), return_exceptions=True)
        for name, outcome in zip(attacks, outcomes, strict=True):
            assert isinstance(outcome, grpc.aio.AioRpcError), f"{name}: {outcome}"
            assert outcome.code() == grpc.StatusCode.PERMISSION_DENIED, name
        # Its own tenant it does administer.
        own = await auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(tenant_id=attacker.tenant_id), metadata=as_attacker
        )
        assert admin_key.key.key_id in {k.key_id for k in own.keys}
