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
from rich.console import Console
from rich.table import Table

from maas.v1 import auth_pb2, auth_pb2_grpc
from maas_cli.connection import SECRETS_FILE, Connection

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
console = Console()

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


def _admin_token(given: str | None) -> str:
    if given:
        return given
    if SECRETS_FILE.exists():
        token: str = json.loads(SECRETS_FILE.read_text())["admin_token"]
        return token
    raise typer.BadParameter("no admin token: pass --admin-token or set MAAS_ADMIN_TOKEN")


Metadata = tuple[tuple[str, str]]


def _call(
    auth: str,
    token: str | None,
    rpc: Callable[[auth_pb2_grpc.AuthAsyncStub, Metadata], Awaitable[T]],
) -> T:
    metadata = (("authorization", f"Bearer {_admin_token(token)}"),)

    async def run() -> T:
        async with Connection.from_env().channel(auth) as channel:
            return await rpc(auth_pb2_grpc.AuthStub(channel), metadata)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as err:
        console.print(f"[red]{err.code().name}[/red]: {err.details()}", highlight=False)
        raise typer.Exit(1) from None


def _show_tenants(tenants: list[auth_pb2.Tenant]) -> None:
    table = Table("tenant_id", "name", "priority", "rpm", "tpm", "concurrent", "monthly", "models")
    for t in tenants:
        p = t.plan
        table.add_row(
            t.tenant_id,
            t.name,
            auth_pb2.Priority.Name(t.priority).removeprefix("PRIORITY_").lower(),
            *(str(v or "-") for v in (p.requests_per_minute, p.tokens_per_minute,
                                       p.max_concurrent_requests, p.monthly_token_budget)),
            ",".join(p.allowed_models) or "all",
        )  # fmt: skip
    console.print(table)


@tenant_app.command("create")
def tenant_create(
    name: str,
    priority: Annotated[str, typer.Option(help="interactive, default or batch")] = "default",
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
) -> None:
    """Creates a tenant (operator only) on the mesh's finite default plan; set-plan changes it."""
    if priority not in PRIORITIES:
        raise typer.BadParameter(f"priority must be one of {', '.join(PRIORITIES)}")
    request = auth_pb2.CreateTenantRequest(name=name, priority=PRIORITIES[priority])
    tenant = _call(auth, admin_token, lambda s, md: s.CreateTenant(request, metadata=md))
    _show_tenants([tenant])


@tenant_app.command("list")
def tenant_list(auth: AuthOption = "127.0.0.1:50052", admin_token: TokenOption = None) -> None:
    """Lists tenants with their plans (operator only)."""
    reply = _call(auth, admin_token, lambda s, md: s.ListTenants(
        auth_pb2.ListTenantsRequest(), metadata=md))  # fmt: skip
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
) -> None:
    """Changes a tenant's plan (operator only): the limits given, the rest as
    they are. 0 is unlimited."""
    if priority is not None and priority not in PRIORITIES:
        raise typer.BadParameter(f"priority must be one of {', '.join(PRIORITIES)}")

    async def set_plan(stub: auth_pb2_grpc.AuthAsyncStub, md: Metadata) -> auth_pb2.Tenant:
        listed = await stub.ListTenants(auth_pb2.ListTenantsRequest(), metadata=md)
        current = next((t.plan for t in listed.tenants if t.tenant_id == tenant_id), None)
        if current is None:
            raise typer.BadParameter(f"no tenant {tenant_id!r}")
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

    tenant = _call(auth, admin_token, set_plan)
    _show_tenants([tenant])


def _show_keys(keys: list[auth_pb2.ApiKey]) -> None:
    table = Table("key_id", "tenant_id", "name", "scopes", "expires", "revoked")
    for k in keys:
        expires = k.expire_time.ToDatetime().isoformat() if k.HasField("expire_time") else "-"
        revoked = k.revoke_time.ToDatetime().isoformat() if k.HasField("revoke_time") else "-"
        table.add_row(k.key_id, k.tenant_id, k.name, ",".join(k.scopes), expires, revoked)
    console.print(table)


@key_app.command("create")
def key_create(
    tenant_id: str,
    name: Annotated[str, typer.Option(help="a label")] = "",
    scope: Annotated[list[str] | None, typer.Option(help="generate, usage:read, admin")] = None,
    expires_in_days: Annotated[float | None, typer.Option(min=0.0, help="default: never")] = None,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
) -> None:
    """Creates an API key and prints it (the only time it is shown)."""
    request = auth_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name=name, scopes=scope or [])
    if expires_in_days is not None:
        request.expire_time.FromDatetime(datetime.now(UTC) + timedelta(days=expires_in_days))
    created = _call(auth, admin_token, lambda s, md: s.CreateApiKey(request, metadata=md))
    _show_keys([created.key])
    typer.echo(created.api_key)


@key_app.command("revoke")
def key_revoke(
    key_id: str, auth: AuthOption = "127.0.0.1:50052", admin_token: TokenOption = None
) -> None:
    """Revokes an API key."""
    key = _call(auth, admin_token, lambda s, md: s.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=md))  # fmt: skip
    _show_keys([key])


@key_app.command("list")
def key_list(
    tenant_id: str, auth: AuthOption = "127.0.0.1:50052", admin_token: TokenOption = None
) -> None:
    """Lists a tenant's keys (never their secrets)."""
    reply = _call(auth, admin_token, lambda s, md: s.ListApiKeys(
        auth_pb2.ListApiKeysRequest(tenant_id=tenant_id), metadata=md))  # fmt: skip
    _show_keys(list(reply.keys))
