"""maas.v1.Billing and Metering's costed GetUsage over a real gRPC server, on
both stores; a seeded month's statement against hand-computed files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from maas.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    metering_pb2,
    metering_pb2_grpc,
    usage_pb2,
)
from maas_cli import statement_report
from services.auth.billing import BillingCore
from services.auth.core import MeteringCore
from services.auth.models import RequestStatus, UsageRecord
from services.auth.pricing import NewPrice
from services.auth.store import AuthStore
from tests.auth.conftest import ADMIN_TOKEN
from tests.support import bad_request_fields

ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
EXPECTED = Path(__file__).parent / "expected"
# The seeding book's clock: before November, so its versions are set ahead.
BEFORE = datetime(2026, 10, 1, tzinfo=UTC)


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


def seeded(
    rid: str,
    end: datetime,
    model: str,
    prompt: int,
    cached: int,
    completion: int,
    status: RequestStatus = RequestStatus.COMPLETED,
    tenant: str = "t-seeded",
) -> UsageRecord:
    return UsageRecord(
        rid, tenant, "k-seeded", model, prompt, completion,
        end - timedelta(seconds=1), end, status, cached,
    )  # fmt: skip


async def seed_month(store: AuthStore) -> None:
    """November 2026 of tenant t-seeded: tiny repriced on the 16th, an adapter
    with its own price, a model with none; records outside the month and of
    another tenant that the statement must leave out. The expected files
    under expected/ are computed by hand from these numbers."""
    book = BillingCore(store, clock=lambda: BEFORE)
    await book.set_price(NewPrice("tiny", "", "USD", 150_000, 75_000, 600_000, at(1)))
    await book.set_price(NewPrice("tiny", "", "USD", 200_000, 100_000, 800_000, at(16)))
    await book.set_price(NewPrice("tiny", "tiny-sql", "USD", 300_000, 150_000, 1_200_000, at(1)))
    ledger = MeteringCore(store)
    for record in (
        seeded("r-01", at(3, 10, 0, 1), "tiny", 1200, 200, 350),
        seeded("r-02", at(10, 8, 30), "tiny", 800, 0, 1000, RequestStatus.CANCELLED),
        seeded("r-03", at(20, 12), "tiny", 5000, 4000, 250),
        seeded("r-04", at(21, 9, 15), "tiny-sql", 335, 0, 777),
        seeded("r-05", at(25), "big", 100, 0, 50),
        seeded("r-06", at(31, 23, 59, 59, month=10), "tiny", 10, 0, 10),
        seeded("r-07", at(1, month=12), "tiny", 10, 0, 10),
        seeded("r-08", at(5), "tiny", 10, 0, 10, tenant="t-other"),
    ):
        await ledger.record_usage(record)


async def test_a_seeded_month_matches_its_hand_computed_statement(
    store: AuthStore, auth_channel: grpc.aio.Channel
) -> None:
    await seed_month(store)
    stub = billing_pb2_grpc.BillingStub(auth_channel)
    statement = await stub.GetStatement(
        billing_pb2.GetStatementRequest(tenant_id="t-seeded", month="2026-11"), metadata=ADMIN
    )
    assert (
        statement_report.render(statement, "csv") + "\n"
        == (EXPECTED / "statement_2026-11.csv").read_text()
    )
    assert (
        statement_report.render(statement, "json") + "\n"
        == (EXPECTED / "statement_2026-11.json").read_text()
    )
    records = [
        r
        async for r in stub.ExportUsage(
            billing_pb2.ExportUsageRequest(tenant_id="t-seeded", month="2026-11"), metadata=ADMIN
        )
    ]
    assert [r.request_id for r in records] == ["r-01", "r-02", "r-03", "r-04", "r-05"]
    assert (
        statement_report.cloudevents(records) + "\n"
        == (EXPECTED / "cloudevents_2026-11.jsonl").read_text()
    )


async def test_get_usage_shows_cost_beside_tokens(
    store: AuthStore, auth_channel: grpc.aio.Channel
) -> None:
    await seed_month(store)
    metering = metering_pb2_grpc.MeteringStub(auth_channel)
    start = metering_pb2.MeteringGetUsageRequest(tenant_id="t-seeded").start_time
    start.FromDatetime(at(1))
    reply = await metering.GetUsage(
        metering_pb2.MeteringGetUsageRequest(
            tenant_id="t-seeded", start_time=start, group_by=usage_pb2.USAGE_GROUPING_MODEL
        )
    )
    summary = reply.summary
    assert (summary.requests, summary.cached_prompt_tokens, summary.currency) == (6, 4200, "USD")
    assert list(summary.unpriced_models) == ["big"]
    # r-07 (December 1st) is in this open range: 10 x 0.2 + 10 x 0.8 = 10 micro-units.
    assert summary.cost_micros == 2928 + 10
    assert [(b.key, b.cost_micros, b.unpriced) for b in reply.buckets] == [
        ("big", 0, True),
        ("tiny", 270 + 15 + 810 + 200 + 400 + 200 + 10, False),
        ("tiny-sql", 101 + 932, False),
    ]


async def _tenant_with_admin_key(auth: auth_pb2_grpc.AuthAsyncStub, name: str) -> tuple[str, str]:
    tenant = await auth.CreateTenant(auth_pb2.CreateTenantRequest(name=name), metadata=ADMIN)
    created = await auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="ops", scopes=["admin"]),
        metadata=ADMIN,
    )
    return tenant.tenant_id, created.api_key


async def test_only_the_operator_sets_prices_and_tenants_see_their_own_statement(
    auth_channel: grpc.aio.Channel,
) -> None:
    auth = auth_pb2_grpc.AuthStub(auth_channel)
    stub = billing_pb2_grpc.BillingStub(auth_channel)
    mine, admin_key = await _tenant_with_admin_key(auth, "acme")
    other, _ = await _tenant_with_admin_key(auth, "globex")
    as_tenant = (("authorization", f"Bearer {admin_key}"),)
    new = billing_pb2.SetPriceRequest(
        price=billing_pb2.Price(model="tiny", currency="USD", completion_micros_per_million=1)
    )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.SetPrice(new, metadata=as_tenant)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await stub.SetPrice(new)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    set_ = await stub.SetPrice(new, metadata=ADMIN)
    assert set_.effective_time.seconds > 0
    # Every valid key reads the book.
    listed = await stub.ListPrices(billing_pb2.ListPricesRequest(), metadata=as_tenant)
    assert [p.model for p in listed.prices] == ["tiny"]
    own = await stub.GetStatement(
        billing_pb2.GetStatementRequest(tenant_id=mine, month="2026-11"), metadata=as_tenant
    )
    assert (own.tenant_id, own.total_micros, list(own.lines)) == (mine, 0, [])
    for call in (
        stub.GetStatement(
            billing_pb2.GetStatementRequest(tenant_id=other, month="2026-11"), metadata=as_tenant
        ),
        stub.ExportUsage(
            billing_pb2.ExportUsageRequest(tenant_id=other, month="2026-11"), metadata=as_tenant
        ).read(),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as foreign:
            await call
        assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("price", "field"),
    [
        (billing_pb2.Price(currency="USD"), "price.model"),
        (billing_pb2.Price(model="tiny", currency="dollars"), "price.currency"),
        (
            billing_pb2.Price(model="tiny", currency="USD", prompt_micros_per_million=-1),
            "price.prompt_micros_per_million",
        ),
    ],
)
async def test_bad_prices_are_invalid_naming_the_field(
    auth_channel: grpc.aio.Channel, price: billing_pb2.Price, field: str
) -> None:
    stub = billing_pb2_grpc.BillingStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SetPrice(billing_pb2.SetPriceRequest(price=price), metadata=ADMIN)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == [field]


@pytest.mark.parametrize(
    ("budget", "field"),
    [
        (billing_pb2.Budget(monthly_limit_micros=1), "budget.tenant_id"),
        (billing_pb2.Budget(tenant_id="t" * 10_000, monthly_limit_micros=1), "budget.tenant_id"),
        (
            billing_pb2.Budget(tenant_id="t-x", key_id="k" * 10_000, monthly_limit_micros=1),
            "budget.key_id",
        ),
        (
            billing_pb2.Budget(tenant_id="t-x", key_id="k 1", monthly_limit_micros=1),
            "budget.key_id",
        ),
        (
            billing_pb2.Budget(tenant_id="t-x", monthly_limit_micros=-1),
            "budget.monthly_limit_micros",
        ),
        (
            billing_pb2.Budget(tenant_id="t-x", total_limit_micros=2**63 - 1),
            "budget.total_limit_micros",
        ),
        (
            billing_pb2.Budget(tenant_id="t-x", monthly_limit_micros=1, soft_threshold_percent=101),
            "budget.soft_threshold_percent",
        ),
    ],
)
async def test_hostile_budgets_are_invalid_naming_the_field(
    auth_channel: grpc.aio.Channel, budget: billing_pb2.Budget, field: str
) -> None:
    stub = billing_pb2_grpc.BillingStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SetBudget(billing_pb2.SetBudgetRequest(budget=budget), metadata=ADMIN)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == [field]


@pytest.mark.parametrize("tenant_id", ["t" * 10_000, "t 1", "t\n1"])
async def test_a_hostile_tenant_id_is_invalid_for_each_tenant_read(
    auth_channel: grpc.aio.Channel, tenant_id: str
) -> None:
    """The operator's statement, export and budget list refuse a hostile
    tenant_id naming it, rather than answering an empty month."""
    stub = billing_pb2_grpc.BillingStub(auth_channel)
    for call in (
        stub.GetStatement(
            billing_pb2.GetStatementRequest(tenant_id=tenant_id, month="2026-11"), metadata=ADMIN
        ),
        stub.ExportUsage(
            billing_pb2.ExportUsageRequest(tenant_id=tenant_id, month="2026-11"), metadata=ADMIN
        ).read(),
        stub.ListBudgets(billing_pb2.ListBudgetsRequest(tenant_id=tenant_id), metadata=ADMIN),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(info.value) == ["tenant_id"]


async def test_a_hostile_model_filter_is_invalid_naming_it(auth_channel: grpc.aio.Channel) -> None:
    stub = billing_pb2_grpc.BillingStub(auth_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListPrices(billing_pb2.ListPricesRequest(model="m" * 10_000), metadata=ADMIN)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(info.value) == ["model"]
