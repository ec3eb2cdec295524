"""Cost on the public usage rpc: a whole mesh on a simulated engine (its own
auth store, so its price book is its own), a price set through
maas.v1.Billing, requests through the gateway, and Gateway.GetUsage showing
each at the price in force when it ended, exactly what its tokens cost."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import grpc
import httpx

from maas.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    generation_pb2,
    usage_pb2,
)
from services.mesh import MeshOptions, running_mesh
from tests.support import eventually

MODEL = "sim-tiny"
SIM: dict[str, Any] = {"engine": "sim", "sim_profile": "tiny-cpu", "stream_messages_per_s": 0}
# Per million tokens: $2 prompt, $0.50 cached prompt, $8 completion.
PROMPT, CACHED, COMPLETION = 2_000_000, 500_000, 8_000_000


def exact_micros(usage: usage_pb2.UsageSummary | usage_pb2.UsageBucket) -> int:
    """The exact cost of a bucket's tokens, rounded half up once."""
    cached = usage.cached_prompt_tokens
    exact = (
        (usage.prompt_tokens - cached) * PROMPT
        + cached * CACHED
        + usage.completion_tokens * COMPLETION
    )
    return (exact + 500_000) // 1_000_000


async def test_gateway_usage_shows_the_cost_of_what_ran(tmp_path: Path) -> None:
    options = MeshOptions(state=tmp_path, model=MODEL, overrides={"inference": SIM})
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    async with running_mesh(options) as mesh:
        async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
            auth = auth_pb2_grpc.AuthStub(ch)
            tenant = await auth.CreateTenant(
                auth_pb2.CreateTenantRequest(
                    name=f"t-{secrets.token_hex(4)}", plan=auth_pb2.Plan()
                ),
                metadata=admin,
            )
            key = await auth.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin
            )
            price = billing_pb2.Price(
                model=MODEL,
                currency="EUR",
                prompt_micros_per_million=PROMPT,
                cached_prompt_micros_per_million=CACHED,
                completion_micros_per_million=COMPLETION,
            )
            await billing_pb2_grpc.BillingStub(ch).SetPrice(
                billing_pb2.SetPriceRequest(price=price), metadata=admin
            )
        caller = (("authorization", f"Bearer {key.api_key}"),)
        async with grpc.aio.insecure_channel(mesh.target("gateway")) as ch:
            gateway = gateway_pb2_grpc.GatewayStub(ch)
            request = generation_pb2.GenerateRequest(
                model=MODEL, prompt="The sea at night " * 8, max_tokens=20, ignore_eos=True
            )
            # The same prompt twice: the second is served in part from the prefix cache.
            for _ in range(2):
                async for _chunk in gateway.Generate(request, metadata=caller):
                    pass
            # A stream cut after its first chunk is billed for what it produced.
            cut = gateway.Generate(
                generation_pb2.GenerateRequest(
                    model=MODEL, prompt="Tides", max_tokens=2000, ignore_eos=True
                ),
                metadata=caller,
            )
            await cut.read()
            cut.cancel()

            async def all_billed() -> bool:
                reply = await gateway.GetUsage(gateway_pb2.GetUsageRequest(), metadata=caller)
                return reply.summary.requests == 3

            await eventually(all_billed)
            reply = await gateway.GetUsage(
                gateway_pb2.GetUsageRequest(group_by=usage_pb2.USAGE_GROUPING_MODEL),
                metadata=caller,
            )
        async with httpx.AsyncClient(
            base_url=f"http://{mesh.target('gateway', 'http_port')}",
            headers={"authorization": f"Bearer {key.api_key}"},
        ) as http:
            by_day = (await http.get("/v1/usage", params={"group_by": "day"})).json()
            by_model = (await http.get("/v1/usage", params={"group_by": "model"})).json()
    summary = reply.summary
    assert summary.currency == "EUR"
    assert list(summary.unpriced_models) == []
    assert summary.cached_prompt_tokens > 0
    assert summary.cost_micros == exact_micros(summary) > 0
    [bucket] = reply.buckets
    assert (bucket.key, bucket.unpriced) == (MODEL, False)
    assert bucket.cost_micros == summary.cost_micros

    # The HTTP face shows the same cost beside the same tokens, exactly.
    for body in (by_model, by_day):
        assert body["cost"] == {
            "value": f"{summary.cost_micros / 1_000_000:.6f}",
            "micros": summary.cost_micros,
            "currency": "EUR",
        }
        assert (body["requests"], body["prompt_tokens"], body["completion_tokens"]) == (
            3,
            summary.prompt_tokens,
            summary.completion_tokens,
        )
        assert body["cached_prompt_tokens"] == summary.cached_prompt_tokens
    [model_bucket] = by_model["data"]
    assert (model_bucket["key"], model_bucket["unpriced"]) == (MODEL, False)
    assert model_bucket["cost"]["micros"] == summary.cost_micros
    # One day's bucket (two if the run straddled midnight UTC), keyed by its start.
    assert sum(bucket["requests"] for bucket in by_day["data"]) == 3
    assert all(bucket["key"].endswith("T00:00:00Z") for bucket in by_day["data"])
