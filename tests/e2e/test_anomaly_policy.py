"""The anomaly policy acting on the live mesh: a leaked key's spike (replayed
into the detectors in event time) throttles the key (not its tenant) in auth,
the gateway enforces it on the next request, watchers see the action on the
alert, and an admin lifts it with the CLI; the audit trail shows both."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from typer.testing import CliRunner

from maas.v1 import (
    anomaly_pb2,
    anomaly_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from maas_cli.cli import app
from maas_cli.client import MaasClient
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.anomaly.actuator import running_policy
from services.anomaly.core import AnomalyCore
from services.anomaly.events import RequestEvent
from services.anomaly.server import serving
from services.anomaly.settings import AnomalySettings, PolicyRule, PolicySettings
from services.auth.keys import parse_key
from tests.anomaly.support import T0, feed, poisson_times, request
from tests.mesh import Mesh, TenantKey
from tests.support import eventually

WARMUP_S = 20 * 60


@pytest_asyncio.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    t = setup("anomaly", TelemetrySettings())
    yield t
    t.shutdown()


def leaked_key_spike(tenant_id: str, key_id: str) -> list[RequestEvent]:
    rng = random.Random(11)
    steady = [
        request(at, tenant=tenant_id, key=key_id)
        for at in poisson_times(rng, T0, WARMUP_S + 120, 2.0)
    ]
    spike = [
        request(at, tenant=tenant_id, key=key_id)
        for at in poisson_times(rng, T0 + WARMUP_S, 30, 25.0)
    ]
    return [*steady, *spike]


async def generate_once(mesh: Mesh, api_key: str) -> None:
    async with MaasClient(mesh.gateway, api_key) as client:
        async for _ in client.generate(mesh.model, prompt="hello", max_tokens=2):
            pass


async def test_a_spike_throttles_the_key_until_an_admin_lifts_it(
    mesh: Mesh, tenant_key: TenantKey, telemetry: Telemetry
) -> None:
    parsed = parse_key(tenant_key.api_key)
    assert parsed is not None
    key_id, tenant_id = parsed.key_id, tenant_key.tenant_id
    policy = PolicySettings(
        auth_address=mesh.targets["auth"],
        router_address=mesh.targets["router"],
        admin_token=mesh.admin_token,
        rules={"request_rate_spike": PolicyRule(action="throttle", requests_per_minute=1)},
    )
    core = AnomalyCore(AnomalySettings())
    admin = (("authorization", f"Bearer {mesh.admin_token}"),)
    settings = AnomalySettings(port=0, grace_period_s=0, policy=policy)
    assert settings.policy.enabled
    # The factory runs the policy on the alerts of the core it serves.
    async with (
        serving(settings, telemetry, core=core) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch,
    ):
        watch = anomaly_pb2_grpc.AnomalyStub(ch).WatchAlerts(
            anomaly_pb2.WatchAlertsRequest(tenant_id=tenant_id, kind="request_rate_spike")
        )
        await eventually(lambda: core.watchers == 1)
        feed(core, leaked_key_spike(tenant_id, key_id))

        acted: dict[str, anomaly_pb2.PolicyAction] = {}
        async for alert in watch:
            for action in alert.actions:
                acted[alert.series] = action
            if acted:
                break
        watch.cancel()
        # The tenant's own spike alert waits a moment for its keys' and
        # is then left alone: the leaked key explains it.
        await asyncio.sleep(3)

    assert {series: a.action for series, a in acted.items()} == {f"key:{key_id}": "throttle_key"}
    assert all(a.error == "" and a.reference for a in acted.values())
    tenant_alerts = [a for a in core.alerts() if a.series == f"tenant:{tenant_id}"]
    assert tenant_alerts and all(not a.actions for a in tenant_alerts)

    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
        auth = auth_pb2_grpc.AuthStub(ch)
        listed = await auth.ListRestrictions(
            auth_pb2.ListRestrictionsRequest(tenant_id=tenant_id), metadata=admin
        )
    assert sorted(r.restriction_id for r in listed.restrictions) == sorted(
        a.reference for a in acted.values()
    )
    assert all(
        r.actor == "policy:request_rate_spike" and r.requests_per_minute == 1
        for r in listed.restrictions
    )

    # The throttle admits one request a minute: the second is refused with when to retry.
    await generate_once(mesh, tenant_key.api_key)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await generate_once(mesh, tenant_key.api_key)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(refused.value)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
    assert retry.retry_delay.seconds > 0

    env = {"MAAS_AUTH": mesh.targets["auth"], "MAAS_ADMIN_TOKEN": mesh.admin_token}
    for action in acted.values():
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["admin", "restriction", "lift", action.reference, "--reason", "checked"],
            env=env,
        )
        assert result.exit_code == 0, result.output
    await generate_once(mesh, tenant_key.api_key)

    trail = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["admin", "audit", "--tenant", tenant_id],
        env=env | {"COLUMNS": "250"},
    )
    assert trail.exit_code == 0, trail.output
    lines = trail.output.splitlines()
    assert sum("policy:request_rate_spike" in line and "restrict" in line for line in lines) == 1
    assert sum(" admin " in line and "lift" in line for line in lines) == 1


async def test_an_error_burst_asks_the_router_to_eject_but_never_its_last_replica(
    mesh: Mesh, telemetry: Telemetry
) -> None:
    replica = mesh.targets["inference"]
    policy = PolicySettings(router_address=mesh.targets["router"])
    core = AnomalyCore(AnomalySettings())
    history = [
        request(T0 + i * 0.5, replica=replica, status="UNAVAILABLE" if i % 100 == 50 else "OK")
        for i in range(600)
    ]
    burst = [
        request(T0 + 301 + i * 0.02, replica=replica, status="UNAVAILABLE" if i % 2 else "OK")
        for i in range(200)
    ]
    async with running_policy(policy, telemetry, core):
        feed(core, history + burst)

        def acted() -> bool:
            alerts = core.alerts()
            return any(a.series == f"replica:{replica}" and a.actions for a in alerts)

        await eventually(acted)
    (alert,) = [a for a in core.alerts() if a.series == f"replica:{replica}"]
    (action,) = alert.actions
    assert (action.verb, action.target) == ("eject_replica", replica)
    # The mesh has one replica: the router keeps it, and the alert says why.
    assert action.error.startswith("FAILED_PRECONDITION")
    async with grpc.aio.insecure_channel(mesh.targets["router"]) as ch:
        listed = await router_pb2_grpc.RouterStub(ch).ListReplicas(router_pb2.ListReplicasRequest())
    assert [r.state for r in listed.replicas] == [router_pb2.REPLICA_STATE_SERVING]
