"""`maas top` on the live mesh: its frame, rendered from real rpc answers,
shows the replica, a tenant's traffic and queue, and open alerts; the command
prints a frame with `--once`."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import grpc
import pytest
import pytest_asyncio
from rich.console import Console
from typer.testing import CliRunner

from maas.v1 import (
    anomaly_pb2,
    anomaly_pb2_grpc,
    gateway_pb2_grpc,
    generation_pb2,
    router_pb2,
    router_pb2_grpc,
)
from maas_cli import top
from maas_cli.cli import app
from maas_cli.client import MaasClient
from tests.mesh import Mesh, TenantKey
from tests.support import eventually

WIDTH = 250  # rich neither wraps nor truncates a row this wide
WINDOW = timedelta(minutes=2)
# The async stub classes exist only in the generated .pyi stubs.
Stubs: TypeAlias = "tuple[router_pb2_grpc.RouterAsyncStub, anomaly_pb2_grpc.AnomalyAsyncStub]"


@pytest_asyncio.fixture
async def stubs(mesh: Mesh) -> AsyncIterator[Stubs]:
    async with (
        grpc.aio.insecure_channel(mesh.targets["router"]) as router,
        grpc.aio.insecure_channel(mesh.targets["anomaly"]) as anomaly,
    ):
        yield router_pb2_grpc.RouterStub(router), anomaly_pb2_grpc.AnomalyStub(anomaly)


def text_of(frame: top.MeshSnapshot, previous: top.MeshSnapshot | None = None) -> str:
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    console.print(top.render(frame, previous))
    return console.export_text()


def row_of(text: str, first_cell: str) -> list[str]:
    rows = [line.split() for line in text.splitlines() if line.startswith(first_cell + " ")]
    assert len(rows) == 1, f"{len(rows)} rows for {first_cell} in\n{text}"
    return rows[0]


async def test_a_frame_shows_the_replica_the_tenants_traffic_and_open_alerts(
    mesh: Mesh,
    tenant_key: TenantKey,
    stubs: Stubs,
) -> None:
    router, anomaly = stubs
    started = datetime.now(UTC)
    before = await top.take_snapshot(router, anomaly, alerts_window=WINDOW, timeout_s=5)
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        chunks = [c async for c in client.generate(mesh.model, prompt="top", max_tokens=8)]
    completion_tokens = chunks[-1].usage.completion_tokens
    # Failed logins from this address raise an auth_failure_burst alert.
    async with MaasClient(mesh.gateway, "maas_nope_nope") as stranger:
        for _ in range(12):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stranger.list_models()

    async def tenant_counted() -> bool:
        stats = await anomaly.GetEventStats(anomaly_pb2.GetEventStatsRequest())
        return stats.completion_tokens_by_tenant.get(tenant_key.tenant_id) == completion_tokens

    async def alert_raised() -> bool:
        since = anomaly_pb2.ListAlertsRequest(kind="auth_failure_burst")
        since.since.FromDatetime(started)
        return bool((await anomaly.ListAlerts(since)).alerts)

    await eventually(tenant_counted)
    await eventually(alert_raised)
    after = await top.take_snapshot(router, anomaly, alerts_window=WINDOW, timeout_s=5)
    text = text_of(after, before)

    replica = row_of(text, mesh.targets["inference"])
    assert replica[1:3] == [mesh.model, "serving"]
    # flight, limit, then the replica's recent time to first token in ms
    assert float(replica[5]) > 0
    # queued, class, queued tokens, requests, tokens, tokens/s
    tenant = row_of(text, tenant_key.tenant_id)
    assert tenant[1:6] == ["0", "-", "0", "1", str(completion_tokens)]
    assert float(tenant[6]) > 0
    # last seen, severity, kind, series, detail
    alerts = [line.split() for line in text.splitlines() if "auth_failure_burst" in line]
    assert ["auth_failure_burst", "source:ipv4:127.0.0.1"] in [alert[2:4] for alert in alerts]
    # Without an earlier snapshot there is no rate to show.
    # (The session's mesh holds more tenants than a frame lists, busiest first:
    # this one may be past the cut in a frame without rates, so every row is checked.)
    rows = [line.split() for line in text_of(after).splitlines()]
    tenant_rows = [r for r in rows if r and len(r[0]) == 32 and r[0].isalnum() and len(r) == 7]
    assert tenant_rows
    assert {row[6] for row in tenant_rows} == {"-"}


async def test_a_tenant_whose_requests_wait_shows_its_queue(
    mesh: Mesh,
    tenant_key: TenantKey,
    stubs: Stubs,
) -> None:
    router, anomaly = stubs
    # More requests than the replica may run at once (its engine's 64
    # sequences), long enough that the rest wait in the router's queue.
    request = generation_pb2.GenerateRequest(
        model=mesh.model, prompt="flood", max_tokens=1000, ignore_eos=True
    )
    metadata = (("authorization", f"Bearer {tenant_key.api_key}"),)
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        calls = [gateway.Generate(request, metadata=metadata) for _ in range(72)]
        readers = [asyncio.create_task(call.read()) for call in calls]
        try:

            async def queued() -> bool:
                stats = await router.GetQueueStats(router_pb2.GetQueueStatsRequest())
                return any(d.tenant_id == tenant_key.tenant_id for d in stats.depths)

            await eventually(queued)
            frame = await top.take_snapshot(router, anomaly, alerts_window=WINDOW, timeout_s=5)
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    depth = next(d for d in frame.queue.depths if d.tenant_id == tenant_key.tenant_id)
    text = text_of(frame)
    tenant = row_of(text, tenant_key.tenant_id)
    assert tenant[1:5] == [str(depth.waiting), "default", str(depth.waiting), str(depth.tokens)]
    assert f"queued {frame.queue.waiting} " in text


async def test_maas_top_once_prints_a_frame(
    mesh: Mesh, tenant_key: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session's mesh has served many tenants by now; show them all.
    monkeypatch.setattr(top, "MAX_TENANT_ROWS", 10_000)
    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:
        async for _ in client.generate(mesh.model, prompt="top --once", max_tokens=4):
            pass

    async def counted() -> bool:
        return tenant_key.tenant_id in mesh.anomaly.stats().by_tenant

    await eventually(counted)
    env = {
        "MAAS_ROUTER": mesh.targets["router"],
        "MAAS_ANOMALY": mesh.targets["anomaly"],
        "COLUMNS": str(WIDTH),
    }
    # The CLI runs its own event loop, so it gets a thread of its own.
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["top", "--once", "--interval", "0.2"], env=env
    )
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    for title in ("replicas", "tenants", "open alerts"):
        assert title in lines
    assert row_of(result.output, mesh.targets["inference"])[1] == mesh.model
    assert row_of(result.output, tenant_key.tenant_id)[4] == "1"


def rendered(replica: router_pb2.Replica) -> str:
    console = Console(width=200, record=True)
    console.print(top._replica_table(router_pb2.ListReplicasResponse(replicas=[replica])))
    return console.export_text()


def test_a_probed_replica_shows_as_probing_with_its_failures() -> None:
    replica = router_pb2.Replica(
        address="127.0.0.1:50054",
        model=generation_pb2.ModelInfo(name="tiny-llama"),
        state=router_pb2.REPLICA_STATE_SERVING,
        probing=True,
        consecutive_failures=3,
    )
    assert "probing (3 failed)" in rendered(replica)
    replica.probing = False
    assert "serving" in rendered(replica) and "probing" not in rendered(replica)
