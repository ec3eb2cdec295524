"""`maas admin budget set|list` against a real auth server (its store SQLite
or PostgreSQL): exact amounts, --json, who may set and read, exit statuses."""

from __future__ import annotations

import json

import grpc

from maas.v1 import auth_pb2, auth_pb2_grpc
from tests.auth.conftest import ADMIN_TOKEN
from tests.auth.test_billing_cli import auth_target, maas

__all__ = ["auth_target"]  # the fixture, shared with the price commands' tests


async def tenant_and_admin_key(target: str) -> tuple[str, str, str]:
    """A tenant, the id of one of its keys, and an admin-scoped key of it."""
    admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        auth = auth_pb2_grpc.AuthStub(channel)
        tenant = await auth.CreateTenant(auth_pb2.CreateTenantRequest(name="acme"), metadata=admin)
        key = await auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin
        )
        admin_key = await auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, scopes=["admin"]),
            metadata=admin,
        )
    return tenant.tenant_id, key.key.key_id, admin_key.api_key


async def test_budget_set_and_list_keep_amounts_exact(auth_target: str) -> None:
    tenant, key_id, tenant_admin = await tenant_and_admin_key(auth_target)
    set_ = await maas(
        auth_target, "admin", "budget", "set", "--tenant", tenant, "--monthly", "25.000001",
        "--soft", "80", "--json",
    )  # fmt: skip
    assert set_.exit_code == 0, set_.output
    [budget] = json.loads(set_.output)
    assert (budget["tenant_id"], budget["key_id"]) == (tenant, "")
    assert (budget["monthly_limit_micros"], budget["monthly_limit"]) == (25_000_001, "25.000001")
    assert budget["soft_threshold_percent"] == 80
    keyed = await maas(
        auth_target, "admin", "budget", "set", "--tenant", tenant, "--key", key_id,
        "--total", "3",
    )  # fmt: skip
    assert keyed.exit_code == 0, keyed.output
    assert key_id in keyed.output  # ids are never cut
    # The tenant's admin key reads its own budgets, the tenant's first.
    listed = await maas(
        auth_target, "admin", "budget", "list", "--tenant", tenant, "--json", token=tenant_admin
    )
    assert listed.exit_code == 0, listed.output
    assert [
        (b["key_id"], b["total_limit_micros"], b["month_spent_micros"])
        for b in json.loads(listed.output)
    ] == [("", 0, 0), (key_id, 3_000_000, 0)]


async def test_budget_commands_exit_with_their_status(auth_target: str) -> None:
    tenant, _, tenant_admin = await tenant_and_admin_key(auth_target)
    not_theirs = await maas(
        auth_target, "admin", "budget", "set", "--tenant", tenant, "--monthly", "1",
        token=tenant_admin,
    )  # fmt: skip
    assert not_theirs.exit_code == 7  # PERMISSION_DENIED: the operator sets budgets
    every = await maas(auth_target, "admin", "budget", "list", token=tenant_admin)
    assert every.exit_code == 7  # every tenant's: the operator's alone
    unknown = await maas(
        auth_target, "admin", "budget", "set", "--tenant", "0" * 32, "--monthly", "1"
    )
    assert unknown.exit_code == 5  # NOT_FOUND
    too_fine = await maas(
        auth_target, "admin", "budget", "set", "--tenant", tenant, "--monthly", "0.0000001"
    )
    assert too_fine.exit_code == 2  # bad command-line use
    bad_soft = await maas(
        auth_target, "admin", "budget", "set", "--tenant", tenant, "--soft", "101"
    )
    assert bad_soft.exit_code == 2


async def test_hostile_amounts_are_bad_usage_not_a_traceback(auth_target: str) -> None:
    """inf, NaN and amounts past int64 once raised (OverflowError, protobuf's
    ValueError); every one is now refused before any call, naming its flag."""
    for flag, value in (
        ("--monthly", "inf"),
        ("--monthly", "NaN"),
        ("--total", "1e30"),
        ("--total", "-1e999999"),
    ):
        refused = await maas(auth_target, "admin", "budget", "set", "--tenant", "t-x", flag, value)
        assert refused.exit_code == 2, refused.output  # bad command-line use
        assert flag in refused.output
    price = await maas(
        auth_target, "admin", "price", "set", "tiny", "--prompt", "Infinity", "--completion", "1"
    )
    assert price.exit_code == 2, price.output
    assert "--prompt" in price.output
