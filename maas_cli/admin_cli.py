"""`maas admin`: tenants, keys and plans, talking to the auth service with an
admin credential: the operator token (`admin_token` in .maas/secrets.json),
which administers every tenant and the mesh, or an API key with the `admin`
scope, which administers its own tenant's keys only (anything else is
PERMISSION_DENIED)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import grpc
import typer

from maas.v1 import auth_pb2, auth_pb2_grpc
from maas_cli.connection import SECRETS_FILE, Connection
from maas_cli.output import (
    CommandFailed,
    JsonOption,
    bad_usage,
    failures,
    id_table,
    print_json,
    print_record,
    print_table,
    to_dict,
)

PRIORITIES = {
    "interactive": auth_pb2.PRIORITY_INTERACTIVE,
    "default": auth_pb2.PRIORITY_DEFAULT,
    "batch": auth_pb2.PRIORITY_BATCH,
}

admin = typer.Typer(help="Administer tenants, API keys and plans.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants and their plans.", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
admin.add_typer(tenant_app, name="tenant")
admin.add_typer(key_app, name="key")

AuthOption = Annotated[
    str, typer.Option("--auth", envvar="MAAS_AUTH", help="host:port of the auth service")
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--admin-token",
        envvar="MAAS_ADMIN_TOKEN",
        help="the operator token, or a tenant's admin-scoped API key (its own tenant only); "
        "default: the operator token in .maas/secrets.json",
    ),
]
T = TypeVar("T")
S = TypeVar("S")  # a service stub


def _admin_token(given: str | None) -> str:
    if given:
        return given
    if SECRETS_FILE.exists():
        token: str = json.loads(SECRETS_FILE.read_text())["admin_token"]
        return token
    bad_usage("no admin token: pass --admin-token or set MAAS_ADMIN_TOKEN")


Metadata = tuple[tuple[str, str]]


def auth_stub(channel: grpc.aio.Channel) -> auth_pb2_grpc.AuthAsyncStub:
    return auth_pb2_grpc.AuthStub(channel)


def admin_rpc(
    auth: str,
    token: str | None,
    stub: Callable[[grpc.aio.Channel], S],
    rpc: Callable[[S, Metadata], Awaitable[T]],
) -> T:
    """One admin-credentialed RPC to the auth service at `auth`, on the stub
    `stub(channel)` makes (its Auth or its Billing service); a failure is
    printed and exits as the CLI's other failures do."""
    metadata = (("authorization", f"Bearer {_admin_token(token)}"),)

    async def run() -> T:
        async with Connection.from_env().channel(auth) as channel:
            return await rpc(stub(channel), metadata)

    with failures():
        return asyncio.run(run())


def _tenant_fields(t: auth_pb2.Tenant) -> list[tuple[str, str]]:
    p = t.plan
    return [
        ("tenant_id", t.tenant_id),
        ("name", t.name),
        ("priority", auth_pb2.Priority.Name(t.priority).removeprefix("PRIORITY_").lower()),
        *((name, str(v or "-")) for name, v in (
            ("rpm", p.requests_per_minute), ("tpm", p.tokens_per_minute),
            ("concurrent", p.max_concurrent_requests), ("monthly", p.monthly_token_budget))),
        ("models", ",".join(p.allowed_models) or "all"),
    ]  # fmt: skip


def _show_tenant(tenant: auth_pb2.Tenant, as_json: bool) -> None:
    if as_json:
        print_json(to_dict(tenant))
    else:
        print_record(_tenant_fields(tenant))


def _show_tenants(tenants: list[auth_pb2.Tenant]) -> None:
    rows = [_tenant_fields(t) for t in tenants]
    table = id_table(*(name for name, _ in _tenant_fields(auth_pb2.Tenant())), ids=["tenant_id"])
    for row in rows:
        table.add_row(*(value for _, value in row))
    print_table(table)


@tenant_app.command("create")
def tenant_create(
    name: str,
    priority: Annotated[str, typer.Option(help="interactive, default or batch")] = "default",
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Creates a tenant (operator only) on the mesh's finite default plan; set-plan changes it."""
    if priority not in PRIORITIES:
        bad_usage(f"priority must be one of {', '.join(PRIORITIES)}")
    request = auth_pb2.CreateTenantRequest(name=name, priority=PRIORITIES[priority])
    tenant = admin_rpc(
        auth, admin_token, auth_stub, lambda s, md: s.CreateTenant(request, metadata=md)
    )
    _show_tenant(tenant, as_json)


@tenant_app.command("list")
def tenant_list(
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lists tenants with their plans (operator only)."""
    reply = admin_rpc(auth, admin_token, auth_stub, lambda s, md: s.ListTenants(
        auth_pb2.ListTenantsRequest(), metadata=md))  # fmt: skip
    if as_json:
        print_json(to_dict(reply))
    else:
        _show_tenants(list(reply.tenants))


@tenant_app.command("set-plan")
def tenant_set_plan(
    tenant_id: str,
    rpm: Annotated[
        int | None, typer.Option(min=0, help="requests per minute (0: unlimited)")
    ] = None,
    tpm: Annotated[int | None, typer.Option(min=0, help="tokens per minute (0: unlimited)")] = None,
    concurrent: Annotated[
        int | None, typer.Option(min=0, help="requests at once (0: unlimited)")
    ] = None,
    monthly: Annotated[
        int | None, typer.Option(min=0, help="tokens per month (0: unlimited)")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option(help="allowed model (repeat; none: all)")
    ] = None,
    priority: Annotated[str | None, typer.Option(help="interactive, default or batch")] = None,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Changes a tenant's plan (operator only): the limits given, the rest as
    they are. 0 is unlimited."""
    if priority is not None and priority not in PRIORITIES:
        bad_usage(f"priority must be one of {', '.join(PRIORITIES)}")

    async def set_plan(stub: auth_pb2_grpc.AuthAsyncStub, md: Metadata) -> auth_pb2.Tenant:
        listed = await stub.ListTenants(auth_pb2.ListTenantsRequest(), metadata=md)
        current = next((t.plan for t in listed.tenants if t.tenant_id == tenant_id), None)
        if current is None:
            raise CommandFailed(grpc.StatusCode.NOT_FOUND, f"no tenant {tenant_id!r}")
        plan = auth_pb2.Plan()
        plan.CopyFrom(current)
        for field, value in (
            ("requests_per_minute", rpm),
            ("tokens_per_minute", tpm),
            ("max_concurrent_requests", concurrent),
            ("monthly_token_budget", monthly),
        ):
            if value is not None:
                setattr(plan, field, value)
        if model is not None:
            del plan.allowed_models[:]
            plan.allowed_models.extend(model)
        request = auth_pb2.SetPlanRequest(
            tenant_id=tenant_id,
            plan=plan,
            priority=PRIORITIES[priority] if priority else auth_pb2.PRIORITY_UNSPECIFIED,
        )
        return await stub.SetPlan(request, metadata=md)

    tenant = admin_rpc(auth, admin_token, auth_stub, set_plan)
    _show_tenant(tenant, as_json)


def _key_fields(k: auth_pb2.ApiKey) -> list[tuple[str, str]]:
    expires = k.expire_time.ToDatetime().isoformat() if k.HasField("expire_time") else "-"
    revoked = k.revoke_time.ToDatetime().isoformat() if k.HasField("revoke_time") else "-"
    return [
        ("key_id", k.key_id),
        ("tenant_id", k.tenant_id),
        ("name", k.name),
        ("scopes", ",".join(k.scopes)),
        ("expires", expires),
        ("revoked", revoked),
    ]


def _show_key(key: auth_pb2.ApiKey, as_json: bool) -> None:
    if as_json:
        print_json(to_dict(key))
    else:
        print_record(_key_fields(key))


def _show_keys(keys: list[auth_pb2.ApiKey]) -> None:
    names = [name for name, _ in _key_fields(auth_pb2.ApiKey())]
    table = id_table(*names, ids=["key_id", "tenant_id"])
    for k in keys:
        table.add_row(*(value for _, value in _key_fields(k)))
    print_table(table)


@key_app.command("create")
def key_create(
    tenant_id: str,
    name: Annotated[str, typer.Option(help="a label")] = "",
    scope: Annotated[
        list[str] | None, typer.Option(help="generate, usage:read, adapters, admin")
    ] = None,
    expires_in_days: Annotated[float | None, typer.Option(min=0.0, help="default: never")] = None,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Creates an API key and prints it (the only time it is shown).

    The secret is the last line of the output (with --json: `api_key`)."""
    request = auth_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name=name, scopes=scope or [])
    if expires_in_days is not None:
        request.expire_time.FromDatetime(datetime.now(UTC) + timedelta(days=expires_in_days))
    created = admin_rpc(
        auth, admin_token, auth_stub, lambda s, md: s.CreateApiKey(request, metadata=md)
    )
    if as_json:
        print_json(to_dict(created))
        return
    print_record(_key_fields(created.key))
    typer.echo(created.api_key)


@key_app.command("revoke")
def key_revoke(
    key_id: str,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revokes an API key."""
    key = admin_rpc(auth, admin_token, auth_stub, lambda s, md: s.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=md))  # fmt: skip
    _show_key(key, as_json)


@key_app.command("list")
def key_list(
    tenant_id: str,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lists a tenant's keys (never their secrets)."""
    reply = admin_rpc(auth, admin_token, auth_stub, lambda s, md: s.ListApiKeys(
        auth_pb2.ListApiKeysRequest(tenant_id=tenant_id), metadata=md))  # fmt: skip
    if as_json:
        print_json(to_dict(reply))
    else:
        _show_keys(list(reply.keys))
