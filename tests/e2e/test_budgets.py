"""Money budgets over a whole mesh on a simulated engine (its own auth store
and price book): an operator sets a tenant's budget through maas.v1.Billing,
requests through the gateway spend it, the soft threshold raises one
`budget_threshold` alert in the anomaly service, and the hard limit refuses
with RESOURCE_EXHAUSTED and a QuotaFailure naming the budget."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from maas.v1 import (
    anomaly_pb2,
    anomaly_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    gateway_pb2_grpc,
    generation_pb2,
)
from services.mesh import MeshOptions, running_mesh
from tests.support import eventually

MODEL = "sim-tiny"
SIM: dict[str, Any] = {"engine": "sim", "sim_profile": "tiny-cpu", "stream_messages_per_s": 0}
# Per million tokens: $2 prompt, $0.50 cached prompt, $8 completion.
PROMPT, CACHED, COMPLETION = 2_000_000, 500_000, 8_000_000
# Each request: about 46 prompt tokens estimated and 20 completion: a worst
# case near 250 micro-units, so a few fit a limit of 1000, not ten.
LIMIT_MICROS = 1000
ATTEMPTS = 10


async def test_a_tenant_at_its_budget_is_refused_and_its_threshold_alerts(
    tmp_path: Path,
) -> None:
    options = MeshOptions(state=tmp_path, model=MODEL, overrides={"inference": SIM})
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    async with (
        running_mesh(options) as mesh,
        grpc.aio.insecure_channel(mesh.targets["auth"]) as ch,
    ):
        auth = auth_pb2_grpc.AuthStub(ch)
        billing = billing_pb2_grpc.BillingStub(ch)
        tenant = await auth.CreateTenant(
            auth_pb2.CreateTenantRequest(name=f"t-{secrets.token_hex(4)}", plan=auth_pb2.Plan()),
            metadata=admin,
        )
        key = await auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin
        )
        await billing.SetPrice(
            billing_pb2.SetPriceRequest(
                price=billing_pb2.Price(
                    model=MODEL,
                    currency="USD",
                    prompt_micros_per_million=PROMPT,
                    cached_prompt_micros_per_million=CACHED,
                    completion_micros_per_million=COMPLETION,
                )
            ),
            metadata=admin,
        )
        await billing.SetBudget(
            billing_pb2.SetBudgetRequest(
                budget=billing_pb2.Budget(
                    tenant_id=tenant.tenant_id,
                    monthly_limit_micros=LIMIT_MICROS,
                    soft_threshold_percent=50,
                )
            ),
            metadata=admin,
        )
        caller = (("authorization", f"Bearer {key.api_key}"),)
        async with grpc.aio.insecure_channel(mesh.target("gateway")) as gw:
            gateway = gateway_pb2_grpc.GatewayStub(gw)
            refused: grpc.aio.AioRpcError | None = None
            served = 0
            for i in range(ATTEMPTS):
                request = generation_pb2.GenerateRequest(
                    model=MODEL, prompt=f"{i} The sea at night " * 8, max_tokens=20
                )
                try:
                    async for _chunk in gateway.Generate(request, metadata=caller):
                        pass
                except grpc.aio.AioRpcError as err:
                    refused = err
                    break
                served += 1
        assert refused is not None, f"{ATTEMPTS} requests all fit a budget of {LIMIT_MICROS}"
        assert served >= 2
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(refused)
        assert status is not None
        failure = error_details_pb2.QuotaFailure()
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(failure) for d in status.details if d.Is(failure.DESCRIPTOR))
        assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
        assert [v.subject for v in failure.violations] == ["budget:tenant:monthly"]
        assert retry.retry_delay.seconds > 0  # the next month

        async def alerted() -> bool:
            async with grpc.aio.insecure_channel(mesh.targets["anomaly"]) as an:
                found = await anomaly_pb2_grpc.AnomalyStub(an).ListAlerts(
                    anomaly_pb2.ListAlertsRequest(
                        tenant_id=tenant.tenant_id, kind="budget_threshold"
                    )
                )
            return bool(found.alerts)

        await eventually(alerted)
        async with grpc.aio.insecure_channel(mesh.targets["anomaly"]) as an:
            found = await anomaly_pb2_grpc.AnomalyStub(an).ListAlerts(
                anomaly_pb2.ListAlertsRequest(tenant_id=tenant.tenant_id)
            )
        [alert] = [a for a in found.alerts if a.kind == "budget_threshold"]
        assert alert.count == 1  # once per budget and period
        assert alert.series == f"{tenant.tenant_id}/budget:tenant:monthly"

        # ListBudgets shows the ledger's spend (once the records land):
        # past the threshold, within the limit.
        async def spent() -> int:
            budgets = await billing.ListBudgets(
                billing_pb2.ListBudgetsRequest(tenant_id=tenant.tenant_id), metadata=admin
            )
            return budgets.budgets[0].month_spent_micros

        async def past_threshold() -> bool:
            return await spent() >= LIMIT_MICROS / 2

        await eventually(past_threshold)
        assert await spent() <= LIMIT_MICROS
