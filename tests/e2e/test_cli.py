"""The `maas` command line against the running mesh: admin (tenants, plans,
keys) and usage exports, as an operator and a tenant would use them."""

from __future__ import annotations

import csv
import io
import json

import grpc

from maas.v1 import auth_pb2, auth_pb2_grpc
from maas_cli.client import MaasClient
from tests.e2e.cli import maas
from tests.mesh import Mesh
from tests.support import eventually


async def test_an_operator_onboards_a_tenant_who_generates_and_exports_usage(
    mesh: Mesh,
) -> None:
    await maas(mesh, "admin", "tenant", "create", "cli-tenant", "--priority", "interactive")
    listed = await maas(mesh, "admin", "tenant", "list")
    row = next(line for line in listed.output.splitlines() if "cli-tenant" in line)
    tenant_id = row.split("│")[1].strip()
    assert "interactive" in row

    plan = await maas(
        mesh, "admin", "tenant", "set-plan", tenant_id, "--rpm", "100", "--model", mesh.model
    )
    assert "100" in plan.output and mesh.model in plan.output
    # A later change of one limit keeps the others (the default plan's and the first change's).
    await maas(mesh, "admin", "tenant", "set-plan", tenant_id, "--concurrent", "7")
    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as channel:
        tenants = await auth_pb2_grpc.AuthStub(channel).ListTenants(
            auth_pb2.ListTenantsRequest(),
            metadata=(("authorization", f"Bearer {mesh.admin_token}"),),
        )
    kept = next(t.plan for t in tenants.tenants if t.tenant_id == tenant_id)
    assert kept.max_concurrent_requests == 7
    assert kept.requests_per_minute == 100
    assert list(kept.allowed_models) == [mesh.model]
    assert kept.tokens_per_minute > 0  # still the default plan's finite limit

    created = await maas(
        mesh, "admin", "key", "create", tenant_id, "--name", "laptop", "--expires-in-days", "30"
    )
    api_key = created.output.strip().splitlines()[-1]
    assert api_key.startswith("maas_")

    async with MaasClient(mesh.gateway, api_key) as client:
        async for _ in client.generate(mesh.model, prompt="hi", max_tokens=3):
            pass

        async def billed() -> bool:
            return (await client.usage()).requests == 1

        await eventually(billed)

    as_json = await maas(mesh, "usage", "--api-key", api_key, "--by", "model", "--format", "json")
    first = json.loads(as_json.output.splitlines()[0])
    assert [json.loads(line) for line in as_json.output.strip().splitlines()] == [
        {
            "tenant": tenant_id,
            "key": mesh.model,
            "requests": 1,
            "prompt_tokens": first["prompt_tokens"],
            "cached_prompt_tokens": first["cached_prompt_tokens"],
            "completion_tokens": 3,
            # The mesh has no price book yet: billed 0, and said to be unpriced.
            "cost": "0.000000",
            "cost_micros": 0,
            "currency": "",
            "unpriced": True,
        }
    ]
    as_csv = await maas(mesh, "usage", "--tenant", tenant_id, "--by", "day", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert len(rows) == 1
    assert rows[0]["tenant"] == tenant_id
    assert rows[0]["key"].endswith("T00:00:00Z")
    assert rows[0]["completion_tokens"] == "3"

    keys = await maas(mesh, "admin", "key", "list", tenant_id)
    key_id = api_key.split("_")[1]
    assert key_id in keys.output
    revoked = await maas(mesh, "admin", "key", "revoke", key_id)
    assert f"key_id {key_id}" in " ".join(revoked.output.split())
    row = next(line for line in revoked.output.splitlines() if line.startswith("revoked"))
    revoked_at = row.removeprefix("revoked").strip()
    assert revoked_at.startswith("20")  # a revocation time, not "-"
