"""`maas top`: a live view of the mesh read from its own rpcs. The router's
ListReplicas and GetQueueStats, the anomaly service's ListAlerts and
GetEventStats; tokens/s is the change in the anomaly service's completion
token counts between two snapshots; time to first token is the router's recent
average per replica."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import timestamp_pb2
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from maas.v1 import anomaly_pb2, anomaly_pb2_grpc, auth_pb2, router_pb2, router_pb2_grpc
from maas_cli.connection import Connection
from maas_cli.output import print_table, to_dict
from maas_cli.severity import severity_markup

REPLICA_STATE_STYLES = {
    router_pb2.REPLICA_STATE_SERVING: "green",
    router_pb2.REPLICA_STATE_NOT_SERVING: "red",
    router_pb2.REPLICA_STATE_DRAINING: "yellow",
    router_pb2.REPLICA_STATE_EJECTED: "bold red",
}
# Rows beyond these are summed up in one line, so a frame fits a terminal.
MAX_TENANT_ROWS = 20
MAX_ALERT_ROWS = 10
# `maas top --json`'s one snapshot: the router and anomaly answer in milliseconds.
SNAPSHOT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MeshSnapshot:
    """What the mesh's rpcs answered at one moment (`taken_at`, monotonic seconds)."""

    replicas: router_pb2.ListReplicasResponse
    queue: router_pb2.QueueStats
    alerts: anomaly_pb2.ListAlertsResponse
    events: anomaly_pb2.EventStats
    taken_at: float


async def take_snapshot(
    router: router_pb2_grpc.RouterAsyncStub,
    anomaly: anomaly_pb2_grpc.AnomalyAsyncStub,
    *,
    alerts_window: timedelta,
    timeout_s: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> MeshSnapshot:
    """Asks the router and the anomaly service at once. Alerts last seen
    within `alerts_window` count as open: a new finding within the anomaly
    service's merge window extends the same alert."""
    since = timestamp_pb2.Timestamp()
    since.FromDatetime(datetime.now(UTC) - alerts_window)
    replicas, queue, alerts, events = await asyncio.gather(
        router.ListReplicas(router_pb2.ListReplicasRequest(), metadata=metadata, timeout=timeout_s),
        router.GetQueueStats(
            router_pb2.GetQueueStatsRequest(), metadata=metadata, timeout=timeout_s
        ),
        anomaly.ListAlerts(
            anomaly_pb2.ListAlertsRequest(since=since, limit=MAX_ALERT_ROWS + 1),
            metadata=metadata,
            timeout=timeout_s,
        ),
        anomaly.GetEventStats(
            anomaly_pb2.GetEventStatsRequest(), metadata=metadata, timeout=timeout_s
        ),
    )
    return MeshSnapshot(replicas, queue, alerts, events, time.monotonic())


def render(current: MeshSnapshot, previous: MeshSnapshot | None = None) -> RenderableType:
    """One frame of `maas top`. Rates need the `previous` snapshot; without
    one they show as "-"."""
    rates = _token_rates(current, previous)
    return Group(
        _summary(current, rates),
        "",
        _replica_table(current.replicas),
        "",
        _tenant_table(current, rates),
        "",
        _alert_table(current.alerts),
    )


def _token_rates(current: MeshSnapshot, previous: MeshSnapshot | None) -> dict[str, float] | None:
    """Completion tokens per second by tenant between the two snapshots."""
    if previous is None or current.taken_at <= previous.taken_at:
        return None
    elapsed = current.taken_at - previous.taken_at
    before = previous.events.completion_tokens_by_tenant
    return {
        tenant: max(tokens - before.get(tenant, 0), 0) / elapsed
        for tenant, tokens in current.events.completion_tokens_by_tenant.items()
    }


def _summary(snapshot: MeshSnapshot, rates: dict[str, float] | None) -> RenderableType:
    replicas = snapshot.replicas.replicas
    serving = sum(r.state == router_pb2.REPLICA_STATE_SERVING for r in replicas)
    shed = ", ".join(f"{reason} {n}" for reason, n in sorted(snapshot.queue.shed.items()))
    line = Text.assemble(
        ("replicas ", "bold"),
        f"{serving}/{len(replicas)} serving   ",
        ("queued ", "bold"),
        f"{snapshot.queue.waiting}   ",
        ("shed ", "bold"),
        f"{shed or 'none'}   ",
        ("tokens/s ", "bold"),
        _rate(sum(rates.values()) if rates is not None else None),
        "   ",
        ("requests ", "bold"),
        str(snapshot.events.by_kind.get("EVENT_KIND_REQUEST", 0)),
    )
    return line


def _replica_table(replicas: router_pb2.ListReplicasResponse) -> Table:
    table = _table("replicas", "replica", "model", "state")
    # Short headers so the table fits 80 columns; the README says what each holds.
    for numbers in ("flight", "limit", "ttft ms", "run", "wait", "kv", "prefix", "promised"):
        table.add_column(numbers, justify="right")
    for r in replicas.replicas:
        state = router_pb2.ReplicaState.Name(r.state).removeprefix("REPLICA_STATE_").lower()
        style = REPLICA_STATE_STYLES.get(r.state, "")
        if r.state == router_pb2.REPLICA_STATE_EJECTED:
            state += f" ({r.ejected_for_s:.0f} s)"
        elif r.probing:
            # The last replica of its model, failing: one request at a time.
            state = f"probing ({r.consecutive_failures} failed)"
            style = "yellow"
        table.add_row(
            r.address,
            r.model.name or "-",
            Text(state, style=style),
            str(r.in_flight),
            str(r.concurrency_limit),
            f"{r.ttft_s * 1e3:.0f}" if r.ttft_s else "-",
            str(r.load.running),
            str(r.load.waiting),
            f"{r.load.kv_cache_usage:.0%}",
            f"{r.load.prefix_cache_hit_rate:.0%}",
            str(r.load.tokens_in_flight),
        )
    return table


def _tenant_table(snapshot: MeshSnapshot, rates: dict[str, float] | None) -> Table:
    """Every tenant that is queued now or has been seen by the anomaly
    service: GetQueueStats lists only non-empty queues."""
    queued: dict[str, list[router_pb2.QueueDepth]] = {}
    for depth in snapshot.queue.depths:
        queued.setdefault(depth.tenant_id, []).append(depth)
    events = snapshot.events
    tenants = set(queued) | set(events.by_tenant) | set(events.completion_tokens_by_tenant)

    def waiting(tenant: str) -> int:
        return sum(d.waiting for d in queued.get(tenant, []))

    def rate(tenant: str) -> float | None:
        return None if rates is None else rates.get(tenant, 0.0)

    def tokens(tenant: str) -> int:
        return events.completion_tokens_by_tenant.get(tenant, 0)

    # Busiest first: queued now, then serving now, then served so far.
    order = sorted(tenants, key=lambda t: (-waiting(t), -(rate(t) or 0.0), -tokens(t), t))
    table = _table("tenants", "tenant")
    for numbers in ("queued", "class", "q tokens", "requests", "tokens", "tok/s"):
        table.add_column(numbers, justify="right")
    for tenant in order[:MAX_TENANT_ROWS]:
        depths = queued.get(tenant, [])
        table.add_row(
            tenant,
            str(waiting(tenant)),
            " ".join(f"{_priority(d.priority)} {d.waiting}" for d in depths) or "-",
            str(sum(d.tokens for d in depths)),
            str(events.by_tenant.get(tenant, 0)),
            str(events.completion_tokens_by_tenant.get(tenant, 0)),
            _rate(rate(tenant)),
        )
    if len(order) > MAX_TENANT_ROWS:
        table.add_row(f"... {len(order) - MAX_TENANT_ROWS} more", style="dim")
    return table


def _alert_table(alerts: anomaly_pb2.ListAlertsResponse) -> Table:
    table = _table("open alerts", "last seen (UTC)", "severity", "kind", "series")
    table.add_column("detail")
    for alert in alerts.alerts[:MAX_ALERT_ROWS]:
        table.add_row(
            alert.last_seen.ToDatetime(tzinfo=UTC).strftime("%H:%M:%S"),
            severity_markup(alert.severity),
            alert.kind,
            alert.series,
            alert.detail,
        )
    if len(alerts.alerts) > MAX_ALERT_ROWS:
        table.add_row("...", "", "", "more: maas alerts", "", style="dim")
    return table


def _table(title: str, *names: str) -> Table:
    """A compact table whose named columns never wrap (ids stay whole)."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        # The box's blank separators already put one space between columns.
        padding=0,
    )
    for name in names:
        table.add_column(name, no_wrap=True)
    return table


def _priority(priority: auth_pb2.Priority) -> str:
    return auth_pb2.Priority.Name(priority).removeprefix("PRIORITY_").lower()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


async def run_top(
    router_target: str,
    anomaly_target: str,
    *,
    console: Console,
    interval_s: float,
    alerts_window: timedelta,
    once: bool,
) -> None:
    """Prints one frame (`once`: from two snapshots `interval_s` apart, so
    rates show) or refreshes a live view every `interval_s` until cancelled."""
    # Router and anomaly answer only the mesh: the operator's certificate and token.
    connection = Connection.from_env()
    async with (
        connection.channel(router_target) as router_channel,
        connection.channel(anomaly_target) as anomaly_channel,
    ):
        router = router_pb2_grpc.RouterStub(router_channel)
        anomaly = anomaly_pb2_grpc.AnomalyStub(anomaly_channel)

        async def snapshot() -> MeshSnapshot:
            # A frame that cannot be had within its interval is stale anyway.
            return await take_snapshot(
                router,
                anomaly,
                alerts_window=alerts_window,
                timeout_s=max(interval_s, 1.0),
                metadata=connection.service_metadata(),
            )

        previous = await snapshot()
        if once:
            await asyncio.sleep(interval_s)
            print_table(render(await snapshot(), previous), console)
            return
        with Live(render(previous), console=console, auto_refresh=False) as live:
            # Queue stats and load have no watch rpc: sampling them is the view.
            while True:
                await asyncio.sleep(interval_s)
                current = await snapshot()
                live.update(render(current, previous), refresh=True)
                previous = current


async def snapshot_once(
    router_target: str, anomaly_target: str, *, alerts_window: timedelta
) -> MeshSnapshot:
    """One snapshot, for `maas top --json`."""
    connection = Connection.from_env()
    async with (
        connection.channel(router_target) as router_channel,
        connection.channel(anomaly_target) as anomaly_channel,
    ):
        return await take_snapshot(
            router_pb2_grpc.RouterStub(router_channel),
            anomaly_pb2_grpc.AnomalyStub(anomaly_channel),
            alerts_window=alerts_window,
            timeout_s=SNAPSHOT_TIMEOUT_S,
            metadata=connection.service_metadata(),
        )


def snapshot_json(snapshot: MeshSnapshot) -> dict[str, Any]:
    """The snapshot's replies, each in protobuf's JSON mapping."""
    return {
        "replicas": to_dict(snapshot.replicas)["replicas"],
        "queue": to_dict(snapshot.queue),
        "alerts": to_dict(snapshot.alerts)["alerts"],
        "events": to_dict(snapshot.events),
    }
