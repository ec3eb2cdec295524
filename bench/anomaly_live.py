"""The anomaly harness's live slice: the evaluation's traffic model, for a few
tenants, sent for real through the mesh (five processes, the tiny model on
the CPU engine), with two injected anomalies: a leaked key's request spike
and a credential-stuffing burst. It shows what the replay cannot: that
alerts reach `WatchAlerts` and that the policy's throttle lands in auth and
is enforced on the leaked key's next requests.

The anomaly service runs with 2 s buckets and a 30-bucket warm-up so the
slice fits in about two minutes; the replay (bench.anomaly_eval) measures
the detectors at their production settings.

    .venv/bin/python -m bench.anomaly_live
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench.anomaly_eval import Tenant, make_tenants
from bench.inference_streaming import free_port
from bench.mesh import auth, inference, model_name, process, router
from maas.v1 import (
    anomaly_pb2,
    anomaly_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    generation_pb2,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MODEL_DIR = REPO / ".maas" / "models" / "tiny-llama"
WORDS = ("the", "sea", "a", "ship", "sails", "under", "grey", "skies", "and", "gulls", "call")


@dataclass
class Timeline:
    """Wall-clock seconds since the traffic began."""

    start: float = field(default_factory=time.perf_counter)

    def now(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Seen:
    at: float
    kind: str
    series: str
    severity: str
    actions: list[dict[str, str]]


@dataclass
class Sent:
    tenant: str
    key: str
    at: float
    code: str = "OK"


@contextlib.asynccontextmanager
async def mesh(model: Path, state: Path, admin_token: str) -> AsyncIterator[dict[str, str]]:
    """auth, inference, router, anomaly (acting on alerts) and gateway, as processes."""
    ports = {name: free_port() for name in ("anomaly", "gateway")}
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    async with contextlib.AsyncExitStack() as stack:
        addr["auth"] = await stack.enter_async_context(auth(state, admin_token, "live-auth"))
        addr["inference"] = await stack.enter_async_context(inference(model, "live-inference"))
        addr["router"] = await stack.enter_async_context(router([addr["inference"]], "live-router"))
        await stack.enter_async_context(
            process(
                ["-m", "services.anomaly", "--port", str(ports["anomaly"]),
                 "--bucket-s", "2", "--rate.warmup-buckets", "30", "--rate.warmup-requests", "10",
                 "--policy.auth-address", addr["auth"],
                 "--policy.router-address", addr["router"],
                 "--policy.admin-token", admin_token],
                "live-anomaly.log", addr["anomaly"], "maas.v1.Anomaly",
            )
        )  # fmt: skip
        await stack.enter_async_context(
            process(
                ["-m", "gateway", "--port", str(ports["gateway"]),
                 "--router-address", addr["router"], "--auth-address", addr["auth"],
                 "--anomaly-address", addr["anomaly"],
                 "--usage-outbox-path", str(state / "outbox.db")],
                "live-gateway.log", addr["gateway"], "maas.v1.Gateway",
            )
        )  # fmt: skip
        yield addr


async def onboard(auth: str, admin_token: str, tenants: list[Tenant]) -> dict[str, str]:
    """A real tenant and key in auth for each modelled key; modelled key id -> API key."""
    admin = (("authorization", f"Bearer {admin_token}"),)
    keys: dict[str, str] = {}
    async with grpc.aio.insecure_channel(auth) as ch:
        stub = auth_pb2_grpc.AuthStub(ch)
        for t in tenants:
            made = await stub.CreateTenant(
                # Unlimited: the modelled load is the point, not the default plan's limits.
                auth_pb2.CreateTenantRequest(name=f"live-{t.tenant_id}", plan=auth_pb2.Plan()),
                metadata=admin,
            )
            for key in t.keys:
                created = await stub.CreateApiKey(
                    auth_pb2.CreateApiKeyRequest(tenant_id=made.tenant_id, name=key),
                    metadata=admin,
                )
                keys[key] = created.api_key
    return keys


async def one_request(
    gateway: gateway_pb2_grpc.GatewayAsyncStub,
    model: str,
    api_key: str,
    rng: random.Random,
    t: Tenant,
    sent: Sent,
) -> None:
    words = min(int(math.exp(rng.gauss(t.prompt_mu, 0.5)) / 20), 60) + 1
    request = generation_pb2.GenerateRequest(
        model=model,
        prompt=" ".join(rng.choice(WORDS) for _ in range(words)),
        max_tokens=min(int(math.exp(rng.gauss(t.completion_mu, 0.5)) / 20), 24) + 1,
    )
    try:
        async for _ in gateway.Generate(
            request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=60
        ):
            pass
    except grpc.aio.AioRpcError as err:
        sent.code = err.code().name


async def tenant_traffic(
    gateway: gateway_pb2_grpc.GatewayAsyncStub,
    model: str,
    keys: dict[str, str],
    t: Tenant,
    rate: float,
    until: float,
    clock: Timeline,
    rng: random.Random,
    sent: list[Sent],
    key: str | None = None,
) -> None:
    """Poisson arrivals of clumps (the replay's model), from a random key of the tenant."""
    tasks: list[asyncio.Task[None]] = []
    while (now := clock.now()) < until:
        await asyncio.sleep(rng.expovariate(rate / t.clump))
        for _ in range(max(1, round(rng.expovariate(1 / t.clump)))):
            chosen = key or rng.choices(t.keys, weights=t.key_weights)[0]
            record = Sent(t.tenant_id, chosen, now)
            sent.append(record)
            tasks.append(
                asyncio.create_task(one_request(gateway, model, keys[chosen], rng, t, record))
            )
    await asyncio.gather(*tasks)


async def stuffing(gateway_address: str, start: float, clock: Timeline, attempts: int) -> None:
    """Bad keys from one address, a new connection (so a new port) each time."""
    await asyncio.sleep(max(0.0, start - clock.now()))
    for i in range(attempts):
        async with grpc.aio.insecure_channel(gateway_address) as ch:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await gateway_pb2_grpc.GatewayStub(ch).ListModels(
                    gateway_pb2.ListModelsRequest(),
                    metadata=(("authorization", f"Bearer maas_stolen{i}_guess"),),
                )
        await asyncio.sleep(0.25)


async def watch_alerts(anomaly: str, clock: Timeline, seen: list[Seen]) -> None:
    async with grpc.aio.insecure_channel(anomaly) as ch:
        async for alert in anomaly_pb2_grpc.AnomalyStub(ch).WatchAlerts(
            anomaly_pb2.WatchAlertsRequest()
        ):
            seen.append(
                Seen(
                    at=clock.now(),
                    kind=alert.kind,
                    series=alert.series,
                    severity=anomaly_pb2.Severity.Name(alert.severity),
                    actions=[
                        {"action": a.action, "target": a.target, "reference": a.reference,
                         "error": a.error}
                        for a in alert.actions
                    ],
                )
            )  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tenants = make_tenants(args.tenants, random.Random(args.seed))
    total = sum(t.rate for t in tenants)
    scale = args.requests_per_s / total  # the modelled mix, scaled to what one CPU engine serves
    admin_token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as state:
        async with mesh(args.model, Path(state), admin_token) as addr:
            model = await model_name(addr["inference"])
            keys = await onboard(addr["auth"], admin_token, tenants)
            leaked_tenant = tenants[0]
            leaked = leaked_tenant.keys[0]
            clock = Timeline()
            seen: list[Seen] = []
            sent: list[Sent] = []
            watcher = asyncio.create_task(watch_alerts(addr["anomaly"], clock, seen))
            spike_at = args.warmup_s
            stuffing_at = spike_at + args.spike_s + 5
            end = stuffing_at + args.stuffing_attempts * 0.3 + 5
            async with grpc.aio.insecure_channel(addr["gateway"]) as ch:
                gateway = gateway_pb2_grpc.GatewayStub(ch)

                async def spike() -> None:
                    await asyncio.sleep(spike_at)
                    await tenant_traffic(
                        gateway, model, keys, leaked_tenant, args.spike_per_s,
                        spike_at + args.spike_s, clock, rng, sent, key=leaked,
                    )  # fmt: skip

                await asyncio.gather(
                    *(
                        tenant_traffic(
                            gateway, model, keys, t, t.rate * scale, end, clock, rng, sent
                        )
                        for t in tenants
                    ),
                    spike(),
                    stuffing(addr["gateway"], stuffing_at, clock, args.stuffing_attempts),
                )
            await asyncio.sleep(3)  # the last events' buckets close
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            async with grpc.aio.insecure_channel(addr["auth"]) as ch:
                restrictions = await auth_pb2_grpc.AuthStub(ch).ListRestrictions(
                    auth_pb2.ListRestrictionsRequest(include_inactive=True),
                    metadata=(("authorization", f"Bearer {admin_token}"),),
                )
    return summarize(args, seen, sent, restrictions, spike_at, stuffing_at, leaked)


def summarize(
    args: argparse.Namespace,
    seen: list[Seen],
    sent: list[Sent],
    restrictions: auth_pb2.ListRestrictionsResponse,
    spike_at: float,
    stuffing_at: float,
    leaked: str,
) -> dict[str, Any]:
    spike_alerts = [s for s in seen if s.kind == "request_rate_spike" and s.at >= spike_at]
    key_alert = next((s for s in spike_alerts if s.series.startswith("key:")), None)
    acted = next((s for s in seen if s.kind == "request_rate_spike" and any(
        a["action"] == "throttle_key" and a["reference"] for a in s.actions)), None)  # fmt: skip
    stuffing_alert = next((s for s in seen if s.kind == "auth_failure_burst"), None)
    before = [s for s in seen if s.at < spike_at]
    policy_restrictions = [r for r in restrictions.restrictions if r.actor.startswith("policy:")]
    throttled_at = acted.at if acted else math.inf
    leaked_after = [s for s in sent if s.key == leaked and s.at > throttled_at]
    return {
        "requests_sent": len(sent),
        "requests_ok": sum(s.code == "OK" for s in sent),
        "alerts_before_injection": [(s.kind, s.series) for s in before],
        "spike_alert_delay_s": key_alert.at - spike_at if key_alert else None,
        "throttle_landed_delay_s": acted.at - spike_at if acted else None,
        "restrictions_in_auth": [
            {
                "subject": f"key:{r.key_id}" if r.key_id else f"tenant:{r.tenant_id}",
                "actor": r.actor,
                "rpm": r.requests_per_minute,
                "alert_id": r.alert_id,
            }
            for r in policy_restrictions
        ],
        "leaked_key_requests_after_throttle": len(leaked_after),
        "leaked_key_refused_after_throttle": sum(
            s.code == "RESOURCE_EXHAUSTED" for s in leaked_after
        ),
        "other_keys_requests": sum(s.key != leaked for s in sent),
        "other_keys_refused": sum(s.key != leaked and s.code != "OK" for s in sent),
        "stuffing_alert_delay_s": stuffing_alert.at - stuffing_at if stuffing_alert else None,
        "alerts": [s.__dict__ for s in seen],
    }


def render(result: dict[str, Any]) -> str:
    def secs(v: float | None) -> str:
        return "not seen" if v is None else f"{v:.1f} s"

    rows = [
        ("requests sent (ok)", f"{result['requests_sent']} ({result['requests_ok']})"),
        ("alerts before any injection", str(len(result["alerts_before_injection"]))),
        ("leaked key: spike alert on WatchAlerts", secs(result["spike_alert_delay_s"])),
        ("leaked key: throttle landed in auth", secs(result["throttle_landed_delay_s"])),
        ("policy restrictions in auth", ", ".join(
            f"{r['subject'][:16]} {r['rpm']}/min" for r in result["restrictions_in_auth"]
        ) or "none"),
        ("leaked key requests after throttle (refused)",
         f"{result['leaked_key_requests_after_throttle']} "
         f"({result['leaked_key_refused_after_throttle']})"),
        ("every other key: requests (refused)",
         f"{result['other_keys_requests']} ({result['other_keys_refused']})"),
        ("credential stuffing: alert on WatchAlerts", secs(result["stuffing_alert_delay_s"])),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = ["live slice (delays after the injection began, wall clock)", "-" * (width + 40)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--requests-per-s", type=float, default=4.0, help="all tenants together")
    parser.add_argument("--warmup-s", type=float, default=70.0)
    parser.add_argument("--spike-s", type=float, default=20.0)
    parser.add_argument("--spike-per-s", type=float, default=30.0)
    parser.add_argument("--stuffing-attempts", type=int, default=40)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    table = render(result)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "anomaly_live",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "result": result,
        "table": table,
    }
    (RESULTS / "anomaly_live.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
