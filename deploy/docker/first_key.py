"""`python -m deploy.docker.first_key TENANT`: a compose user's first API key.

Run inside an auth container, where the operator token and the service token
already are (`docker compose exec auth python -m deploy.docker.first_key acme`):
it creates the tenant unless one of that name exists, then a key for it, and
prints the key alone on stdout (the only time it is shown). Plan limits given
as flags replace the default plan's, 0 meaning unlimited as in every plan;
`maas admin tenant set-plan` changes them later."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping

from maas.v1 import auth_pb2, auth_pb2_grpc
from maas_cli.connection import Connection


async def first_key(
    target: str,
    admin_token: str,
    connection: Connection,
    tenant_name: str,
    limits: Mapping[str, int],
) -> str:
    """The key; `limits`: Plan fields set on the tenant's plan, 0 (unlimited) too."""
    admin = (("authorization", f"Bearer {admin_token}"),)
    async with connection.channel(target) as channel:
        stub = auth_pb2_grpc.AuthStub(channel)
        tenants = await stub.ListTenants(auth_pb2.ListTenantsRequest(), metadata=admin)
        tenant = next((t for t in tenants.tenants if t.name == tenant_name), None)
        if tenant is None:
            tenant = await stub.CreateTenant(
                auth_pb2.CreateTenantRequest(name=tenant_name), metadata=admin
            )
        if limits:
            # Set field by field: a Plan message cannot say 0 apart from unset.
            merged = auth_pb2.Plan()
            merged.CopyFrom(tenant.plan)
            for field, value in limits.items():
                setattr(merged, field, value)
            await stub.SetPlan(
                auth_pb2.SetPlanRequest(tenant_id=tenant.tenant_id, plan=merged), metadata=admin
            )
        created = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="first key"),
            metadata=admin,
        )
        return created.api_key


def plan_limit(text: str) -> int:
    """A plan limit: the proto's uint32 (protobuf raises ValueError past it)."""
    value = int(text)
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError("0 to 4294967295")
    return value


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tenant")
    parser.add_argument("--auth", default="127.0.0.1:50052", help="auth's host:port")
    parser.add_argument("--requests-per-minute", type=plan_limit, help="the plan's (0: unlimited)")
    parser.add_argument(
        "--max-concurrent-requests", type=plan_limit, help="the plan's (0: unlimited)"
    )
    return parser


def plan_limits(args: argparse.Namespace) -> dict[str, int]:
    """The plan fields the flags set; a flag not given leaves its field as it is."""
    given = {
        "requests_per_minute": args.requests_per_minute,
        "max_concurrent_requests": args.max_concurrent_requests,
    }
    return {field: value for field, value in given.items() if value is not None}


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    # The auth container's own settings: its operator token and the mesh's service token.
    env = dict(os.environ)
    if token := env.get("MAAS_AUTH_SERVICE_TOKEN"):
        env.setdefault("MAAS_SERVICE_TOKEN", token)
    admin_token = env.get("MAAS_ADMIN_TOKEN") or env["MAAS_AUTH_ADMIN_TOKEN"]
    key = asyncio.run(
        first_key(args.auth, admin_token, Connection.from_env(env), args.tenant, plan_limits(args))
    )
    print(key)


if __name__ == "__main__":
    main()
