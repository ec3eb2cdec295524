"""`python -m deploy.runtime.replica_sync --replicas NAME:PORT[,NAME:PORT...]`:
keeps the router's replica set equal to the addresses DNS names resolve to.

On Kubernetes the inference replicas are a Deployment behind a headless
Service, whose name resolves to one address per pod. The router needs each
replica as its own address (its own health watch, load stream and
concurrency limit), so this runs beside the router, registers every pod
address the name resolves to and deregisters the ones gone from it (their
streams finish first). Each model is its own Deployment and headless
Service: `--replicas` names each, and the router's set is all they resolve
to together. It owns the router's replica set: start the router with no
static replicas.

DNS has no watch, so the name is looked up again every `--interval-s`, as
gRPC's own DNS resolver does; a failed lookup changes nothing, so a DNS
hiccup never empties the router. Each round reconciles against what the
router itself lists, never against what this sidecar sent before, and a
round also runs the moment a router (re)starts: a restarted router knows
no replica until told, and it is told within a reconnect, not an interval."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.runtime.spec import CommandSpec
from maas.v1 import router_pb2, router_pb2_grpc
from maas_cli.connection import SERVICE_TOKEN_VARIABLE
from observability.logging import configure_logging
from observability.settings import TelemetrySettings
from services.router.spec import CALLER_CHANNEL_OPTIONS

log = structlog.get_logger(__name__)
# Long enough for a busy router, short enough that a hung one is retried next round.
CALL_TIMEOUT_S = 10.0
# Pause before watching again after a watch failed at once (a router that
# refuses the watch), so a refusal is not retried in a tight loop.
WATCH_RETRY_S = 1.0
SPEC = CommandSpec(
    module="deploy.runtime.replica_sync",
    flags=frozenset({"--router", "--replicas", "--interval-s"}),
    # The router answers only the mesh, so the sidecar sends the token, as the CLI reads it.
    environment=frozenset({SERVICE_TOKEN_VARIABLE}),
)


@dataclass(frozen=True)
class SyncResult:
    registered: tuple[str, ...]
    deregistered: tuple[str, ...]


async def resolve(host: str, port: int) -> set[str] | None:
    """`ip:port` of every address `host` resolves to; None if the lookup fails."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        log.warning("lookup failed; replicas left as they are", name=host, error=str(err))
        return None
    ips = {str(info[4][0]) for info in infos}
    return {f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips}


async def sync_once(
    router: router_pb2_grpc.RouterAsyncStub, host: str, port: int, *more: tuple[str, int]
) -> SyncResult | None:
    """Registers what `host` (and each of `more`) resolves to and deregisters
    what none of them does any longer; None (and no change) when a lookup
    fails: which of the router's addresses were that name's is not known."""
    wanted: set[str] = set()
    for name, number in [(host, port), *more]:
        found = await resolve(name, number)
        if found is None:
            return None
        wanted |= found
    listed = await router.ListReplicas(router_pb2.ListReplicasRequest(), timeout=CALL_TIMEOUT_S)
    known = {replica.address for replica in listed.replicas}
    added = sorted(wanted - known)
    gone = sorted(known - wanted)
    for address in added:
        await router.RegisterReplica(
            router_pb2.RegisterReplicaRequest(address=address), timeout=CALL_TIMEOUT_S
        )
        log.info("replica registered", replica=address)
    for address in gone:
        try:
            await router.DeregisterReplica(
                router_pb2.DeregisterReplicaRequest(address=address), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            # Someone else removed it meanwhile: the goal is reached all the same.
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        log.info("replica deregistered", replica=address)
    return SyncResult(tuple(added), tuple(gone))


async def router_starts(health: health_pb2_grpc.HealthAsyncStub, started: asyncio.Event) -> None:
    """Sets `started` whenever a watch of the router's liveness opens: at
    each start of a router process, a restarted one included (the watch of
    the one before broke with its connection). Runs until cancelled."""
    request = health_pb2.HealthCheckRequest(service="")
    while True:
        opened = False
        try:
            # wait_for_ready: while the router is down this waits for it, not fails.
            async for _ in health.Watch(request, wait_for_ready=True):
                opened = True
                started.set()
        except grpc.aio.AioRpcError as err:
            log.info("router watch ended", code=err.code().name)
        if not opened:
            await asyncio.sleep(WATCH_RETRY_S)


async def keep_synced(
    ch: grpc.aio.Channel,
    host: str,
    port: int,
    interval_s: float,
    stop: asyncio.Future[None],
    more: Sequence[tuple[str, int]] = (),
) -> None:
    """Syncs the router on `ch` every `interval_s` and as soon as it (re)starts, until `stop`."""
    router = router_pb2_grpc.RouterStub(ch)
    due = asyncio.Event()
    watcher = asyncio.create_task(router_starts(health_pb2_grpc.HealthStub(ch), due))
    try:
        while not stop.done():
            due.clear()
            try:
                await sync_once(router, host, port, *more)
            except grpc.aio.AioRpcError as err:
                log.warning("router unreachable; next round retries", code=err.code().name)
            woken = asyncio.create_task(due.wait())
            waits: set[asyncio.Future[Any]] = {stop, woken}
            await asyncio.wait(waits, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def run(router: str, targets: Sequence[tuple[str, int]], interval_s: float) -> None:
    from observability import setup
    from observability.channels import ChannelSecurity, channel
    from services.common.serving import wait_for_shutdown_signal

    telemetry = setup("replica-sync", TelemetrySettings())
    security = ChannelSecurity(service_token=os.environ.get(SERVICE_TOKEN_VARIABLE) or None)
    stop = asyncio.create_task(wait_for_shutdown_signal())
    try:
        async with channel(
            router, telemetry, options=CALLER_CHANNEL_OPTIONS, security=security
        ) as ch:
            (host, port), *more = targets
            await keep_synced(ch, host, port, interval_s, stop, more)
    finally:
        stop.cancel()
        telemetry.shutdown()


def replica_targets(text: str) -> list[tuple[str, int]]:
    """`--replicas`: NAME:PORT[,NAME:PORT...], each PORT one a replica
    listens on (1-65535; past it every lookup would fail, forever)."""
    targets = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r}: takes NAME:PORT[,NAME:PORT...], each PORT 1 to 65535"
            )
        targets.append((host, int(port)))
    return targets


def arguments() -> argparse.ArgumentParser:
    """Its flags: SPEC.flags lists them for the deploy checks."""
    parser = argparse.ArgumentParser(
        description="Keeps the router's replicas equal to what a DNS name resolves to."
    )
    parser.add_argument("--router", default="127.0.0.1:50053", help="the router's HOST:PORT")
    parser.add_argument(
        "--replicas",
        type=replica_targets,
        required=True,
        help="NAME:PORT, or several comma separated (a model each); each NAME resolves to "
        "one address per replica",
    )
    parser.add_argument("--interval-s", type=float, default=10.0, help="seconds between lookups")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = arguments()
    args = parser.parse_args(argv)
    configure_logging("replica-sync", TelemetrySettings())
    import uvloop

    uvloop.run(run(args.router, args.replicas, args.interval_s))


if __name__ == "__main__":
    main()
