"""What the `maas` command line prints for a person and for a program: --json
documents with whole ids, whole ids at a normal terminal width, and exit
statuses that follow the gRPC status (maas_cli/output.py's mapping)."""

from __future__ import annotations

import json

import grpc

from maas_cli.output import exit_code
from tests.e2e.cli import invoke, maas
from tests.mesh import Mesh, TenantKey
from tests.support import eventually

# A normal terminal, where rich used to cut ids to `cbe24040cfe6…`.
NARROW = 80


async def test_json_output_parses_and_carries_whole_ids(mesh: Mesh) -> None:
    created = await maas(mesh, "admin", "tenant", "create", "json-tenant", "--json")
    tenant = json.loads(created.stdout)
    tenant_id = tenant["tenant_id"]
    assert len(tenant_id) == 32 and tenant["name"] == "json-tenant"

    listed = json.loads((await maas(mesh, "admin", "tenant", "list", "--json")).stdout)
    assert tenant_id in [t["tenant_id"] for t in listed["tenants"]]

    planned = await maas(
        mesh, "admin", "tenant", "set-plan", tenant_id, "--rpm", "60", "--json", columns=NARROW
    )
    assert json.loads(planned.stdout)["plan"]["requests_per_minute"] == 60

    key = json.loads(
        (await maas(mesh, "admin", "key", "create", tenant_id, "--name", "k", "--json")).stdout
    )
    assert key["api_key"].startswith(f"maas_{key['key']['key_id']}_")
    assert key["key"]["tenant_id"] == tenant_id

    keys = json.loads((await maas(mesh, "admin", "key", "list", tenant_id, "--json")).stdout)
    assert [k["key_id"] for k in keys["keys"]] == [key["key"]["key_id"]]

    models = json.loads((await maas(mesh, "models", "--api-key", key["api_key"], "--json")).stdout)
    assert [m["name"] for m in models["models"]] == [mesh.model]

    answer = await maas(
        mesh, "generate", "hi", "--api-key", key["api_key"], "--max-tokens", "3", "--json"
    )
    generated = json.loads(answer.stdout)
    assert generated["usage"]["completion_tokens"] == 3
    assert generated["model"] == mesh.model

    revoked = await maas(mesh, "admin", "key", "revoke", key["key"]["key_id"], "--json")
    assert json.loads(revoked.stdout)["revoke_time"].startswith("20")


async def test_ids_are_whole_at_a_normal_terminal_width(mesh: Mesh) -> None:
    created = await maas(mesh, "admin", "tenant", "create", "narrow-tenant", columns=NARROW)
    line = next(line for line in created.stdout.splitlines() if line.startswith("tenant_id"))
    tenant_id = line.split()[1]
    assert len(tenant_id) == 32
    assert "…" not in created.stdout

    listed = await maas(mesh, "admin", "tenant", "list", columns=NARROW)
    assert tenant_id in listed.stdout

    key = await maas(mesh, "admin", "key", "create", tenant_id, columns=NARROW)
    api_key = key.stdout.strip().splitlines()[-1]
    key_id = api_key.split("_")[1]
    keys = await maas(mesh, "admin", "key", "list", tenant_id, columns=NARROW)
    assert key_id in keys.stdout and tenant_id in keys.stdout
    assert "…" not in keys.stdout


async def test_exit_statuses_follow_the_grpc_status(mesh: Mesh, tenant_key: TenantKey) -> None:
    failures = {
        grpc.StatusCode.UNAUTHENTICATED: ("admin", "tenant", "list", "--admin-token", "nope"),
        grpc.StatusCode.NOT_FOUND: ("admin", "key", "revoke", "no-such-key"),
        grpc.StatusCode.INVALID_ARGUMENT: ("admin", "tenant", "create", ""),
        # A tenant's generate-only key is no admin credential.
        grpc.StatusCode.PERMISSION_DENIED: (
            "admin", "tenant", "list", "--admin-token", tenant_key.api_key,
        ),
    }  # fmt: skip
    statuses = set()
    for code, args in failures.items():
        human = await invoke(mesh, *args)
        assert human.exit_code == exit_code(code) == code.value[0], (code, human.output)
        assert human.stderr.startswith(code.name) and human.stdout == ""

        as_json = await invoke(mesh, *args, "--json")
        assert as_json.exit_code == exit_code(code)
        assert as_json.stdout == ""
        error = json.loads(as_json.stderr)["error"]
        assert error["code"] == code.name and error["status"] == code.value[0]
        assert error["message"]
        statuses.add(human.exit_code)
    assert len(statuses) == len(failures)
    # None of them is the code of a bad command line (2) or of any other failure (1).
    assert statuses.isdisjoint({1, 2})


async def test_a_missing_tenant_is_not_found(mesh: Mesh) -> None:
    result = await invoke(mesh, "admin", "tenant", "set-plan", "no-such-tenant", "--rpm", "1")
    assert result.exit_code == exit_code(grpc.StatusCode.NOT_FOUND)


async def test_mesh_wide_commands_print_json_too(mesh: Mesh, tenant_key: TenantKey) -> None:
    mesh_env = ("--router", mesh.targets["router"], "--anomaly", mesh.targets["anomaly"])
    top = json.loads((await maas(mesh, "top", *mesh_env, "--json")).stdout)
    assert [r["address"] for r in top["replicas"]] == [mesh.targets["inference"]]
    assert set(top) == {"replicas", "queue", "alerts", "events"}

    alerts = await maas(mesh, "alerts", "--target", mesh.targets["anomaly"], "--json")
    assert isinstance(json.loads(alerts.stdout)["alerts"], list)

    usage = await maas(mesh, "usage", "--api-key", tenant_key.api_key, "--json")
    assert json.loads(usage.stdout)["summary"]["tenant_id"] == tenant_key.tenant_id

    tenant = ("--tenant", tenant_key.tenant_id)
    added = await maas(
        mesh, "admin", "restriction", "add", "throttle", *tenant, "--rpm", "5", "--json"
    )
    (restriction,) = json.loads(added.stdout)["restrictions"]
    assert restriction["tenant_id"] == tenant_key.tenant_id and restriction["active"]
    listed = await maas(mesh, "admin", "restriction", "list", *tenant, "--json")
    ids = [r["restriction_id"] for r in json.loads(listed.stdout)["restrictions"]]
    assert ids == [restriction["restriction_id"]]
    await maas(mesh, "admin", "restriction", "lift", restriction["restriction_id"], "--json")
    audit = json.loads((await maas(mesh, "admin", "audit", *tenant, "--json")).stdout)
    assert {r["restriction_id"] for r in audit["records"]} == {restriction["restriction_id"]}


async def test_a_command_line_that_cannot_run_exits_2_as_json_too(mesh: Mesh) -> None:
    args = ("admin", "tenant", "create", "x", "--priority", "loudest")
    human = await invoke(mesh, *args)
    assert human.exit_code == 2 and "priority must be one of" in human.stderr

    as_json = await invoke(mesh, *args, "--json")
    assert as_json.exit_code == 2 and as_json.stdout == ""
    error = json.loads(as_json.stderr)["error"]
    assert error == {
        "code": "USAGE",
        "status": 2,
        "message": "priority must be one of interactive, default, batch",
    }


async def test_top_once_keeps_tenant_ids_whole_at_a_normal_width(
    mesh: Mesh, tenant_key: TenantKey
) -> None:
    await maas(mesh, "generate", "hi", "--api-key", tenant_key.api_key, "--max-tokens", "2")

    async def counted() -> bool:
        return tenant_key.tenant_id in mesh.anomaly.stats().by_tenant

    await eventually(counted)
    mesh_env = ("--router", mesh.targets["router"], "--anomaly", mesh.targets["anomaly"])
    frame = await maas(mesh, "top", *mesh_env, "--once", "--interval", "0.1", columns=NARROW)
    assert tenant_key.tenant_id in frame.stdout
    assert mesh.targets["inference"] in frame.stdout
