"""`maas admin restriction|audit|replica`: the operator's side of the anomaly
policy: restrict a key or tenant by hand, lift (reverse) a restriction, read
the audit trail, and eject or restore a replica."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Annotated

import typer
from google.protobuf import duration_pb2, timestamp_pb2

from maas.v1 import auth_pb2, router_pb2, router_pb2_grpc
from maas_cli.admin_cli import AuthOption, TokenOption, admin_rpc, auth_stub
from maas_cli.connection import Connection
from maas_cli.output import (
    JsonOption,
    bad_usage,
    console,
    failures,
    id_table,
    print_json,
    print_table,
    to_dict,
)

# The router answers in milliseconds; a wedged one must not hang the operator's shell.
ROUTER_CALL_TIMEOUT_S = 10.0

restriction_app = typer.Typer(
    help="Suspend or throttle a key or tenant; lift restrictions.", no_args_is_help=True
)
replica_app = typer.Typer(help="Eject or restore an inference replica.", no_args_is_help=True)

ACTIONS = {
    "suspend": auth_pb2.RESTRICTION_ACTION_SUSPEND,
    "throttle": auth_pb2.RESTRICTION_ACTION_THROTTLE,
}
RouterOption = Annotated[
    str, typer.Option("--router", envvar="MAAS_ROUTER", help="host:port of the router")
]


def _when(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _show_restrictions(found: list[auth_pb2.Restriction], as_json: bool) -> None:
    if as_json:
        print_json({"restrictions": [to_dict(r) for r in found]})
        return
    table = id_table(
        "restriction_id", "subject", "action", "rpm", "until", "active", "actor", "reason",
        ids=["restriction_id", "subject"],
    )  # fmt: skip
    for r in found:
        subject = f"key:{r.key_id}" if r.key_id else f"tenant:{r.tenant_id}"
        action = auth_pb2.RestrictionAction.Name(r.action).removeprefix("RESTRICTION_ACTION_")
        until = _when(r.expire_time)
        if r.HasField("lift_time"):
            until = f"lifted {_when(r.lift_time)} by {r.lifted_by}"
        table.add_row(
            r.restriction_id,
            subject,
            action.lower(),
            str(r.requests_per_minute or "-"),
            until,
            "yes" if r.active else "no",
            r.actor,
            r.reason,
        )
    print_table(table)


@restriction_app.command("add")
def restriction_add(
    action: Annotated[str, typer.Argument(help="suspend or throttle")],
    tenant: Annotated[str, typer.Option(help="restrict this whole tenant")] = "",
    key: Annotated[str, typer.Option(help="restrict only this API key (its id)")] = "",
    rpm: Annotated[int, typer.Option(min=0, help="throttle: requests per minute allowed")] = 0,
    # An hour: time to look into it, and a forgotten restriction still ends by itself.
    minutes: Annotated[float, typer.Option(min=0.0, help="how long it lasts")] = 60.0,
    reason: Annotated[str, typer.Option(help="why (kept in the audit trail)")] = "",
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Suspends or throttles a tenant or one key until it expires or is lifted (operator only)."""
    if action not in ACTIONS:
        bad_usage(f"action must be one of {', '.join(ACTIONS)}")
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(minutes * 60e9))
    request = auth_pb2.RestrictRequest(
        action=ACTIONS[action],
        requests_per_minute=rpm,
        duration=duration,
        reason=reason or "set by an operator",
        actor="admin",
    )
    if key:
        request.key_id = key
    if tenant:
        request.tenant_id = tenant
    made = admin_rpc(auth, admin_token, auth_stub, lambda s, md: s.Restrict(request, metadata=md))
    _show_restrictions([made], as_json)


@restriction_app.command("list")
def restriction_list(
    tenant: Annotated[str, typer.Option(help="only this tenant's")] = "",
    all_: Annotated[bool, typer.Option("--all", help="also expired and lifted ones")] = False,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lists restrictions (active ones unless --all), newest first. A tenant's
    admin key sees only its own: pass --tenant with its tenant id."""
    request = auth_pb2.ListRestrictionsRequest(tenant_id=tenant, include_inactive=all_)
    reply = admin_rpc(
        auth, admin_token, auth_stub, lambda s, md: s.ListRestrictions(request, metadata=md)
    )
    _show_restrictions(list(reply.restrictions), as_json)


@restriction_app.command("lift")
def restriction_lift(
    restriction_id: str,
    reason: Annotated[str, typer.Option(help="why (kept in the audit trail)")] = "",
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ends a restriction now (reverses a suspension or throttle; operator only)."""
    request = auth_pb2.LiftRestrictionRequest(
        restriction_id=restriction_id, actor="admin", reason=reason
    )
    lifted = admin_rpc(
        auth, admin_token, auth_stub, lambda s, md: s.LiftRestriction(request, metadata=md)
    )
    _show_restrictions([lifted], as_json)


def audit(
    tenant: Annotated[str, typer.Option(help="only this tenant's")] = "",
    # A screenful; auth caps any listing at 1000.
    limit: Annotated[int, typer.Option(min=0, help="at most this many (0: 1000)")] = 50,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The audit trail of restrictions, newest first. A tenant's admin key sees
    only its own: pass --tenant with its tenant id."""
    request = auth_pb2.ListAuditRecordsRequest(tenant_id=tenant, limit=limit)
    reply = admin_rpc(
        auth, admin_token, auth_stub, lambda s, md: s.ListAuditRecords(request, metadata=md)
    )
    if as_json:
        print_json(to_dict(reply))
        return
    table = id_table(
        "time (UTC)", "actor", "action", "restriction_id", "detail", ids=["restriction_id"]
    )
    for r in reply.records:
        table.add_row(_when(r.time), r.actor, r.action, r.restriction_id, r.detail)
    print_table(table)


def _router_call(router: str, call: str, request: object) -> router_pb2.Replica:
    connection = Connection.from_env()

    async def run() -> router_pb2.Replica:
        async with connection.channel(router) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            reply: router_pb2.Replica = await getattr(stub, call)(
                request, metadata=connection.service_metadata(), timeout=ROUTER_CALL_TIMEOUT_S
            )
            return reply

    with failures():
        return asyncio.run(run())


def _show_replica(replica: router_pb2.Replica, as_json: bool) -> None:
    if as_json:
        print_json(to_dict(replica))
        return
    state = router_pb2.ReplicaState.Name(replica.state).removeprefix("REPLICA_STATE_").lower()
    out = f" for {replica.ejected_for_s:.0f} s" if replica.ejected_for_s else ""
    console.print(f"{replica.address}: {state}{out}", highlight=False)


@replica_app.command("eject")
def replica_eject(
    address: str,
    # Time to look at it; a replica ejected in error comes back by itself.
    minutes: Annotated[float, typer.Option(min=0.0, help="how long it stays out")] = 5.0,
    reason: Annotated[str, typer.Option(help="why (logged by the router)")] = "",
    router: RouterOption = "127.0.0.1:50053",
    as_json: JsonOption = False,
) -> None:
    """Takes a replica out of rotation for a while; its streams finish."""
    request = router_pb2.EjectReplicaRequest(
        address=address, duration_s=minutes * 60, reason=reason or "ejected by an operator"
    )
    _show_replica(_router_call(router, "EjectReplica", request), as_json)


@replica_app.command("restore")
def replica_restore(
    address: str, router: RouterOption = "127.0.0.1:50053", as_json: JsonOption = False
) -> None:
    """Puts an ejected replica back into rotation now."""
    request = router_pb2.RestoreReplicaRequest(address=address)
    _show_replica(_router_call(router, "RestoreReplica", request), as_json)


def register(admin: typer.Typer) -> None:
    """Adds these commands to `maas admin`."""
    admin.add_typer(restriction_app, name="restriction")
    admin.add_typer(replica_app, name="replica")
    admin.command("audit")(audit)
