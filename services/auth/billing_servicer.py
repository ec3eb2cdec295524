"""maas.v1.Billing: a thin layer over BillingCore, guarded as the admin rpcs are."""

from __future__ import annotations

from collections.abc import AsyncIterator

from maas.v1 import billing_pb2, billing_pb2_grpc, metering_pb2
from services.auth import billing_convert, convert
from services.auth.billing import BillingCore, Budgets
from services.auth.core import check_id
from services.auth.servicer import AdminGuard, Context
from services.common.errors import InvalidArgumentError
from services.common.generation_limits import MAX_MODEL_NAME_BYTES

# Every Billing rpc checks its own credential (AdminGuard), so all stay
# reachable from outside the mesh, as the Auth admin rpcs do.
BILLING_RPCS = (
    "SetPrice",
    "ListPrices",
    "GetStatement",
    "ExportUsage",
    "SetBudget",
    "ListBudgets",
)


class BillingServicer(billing_pb2_grpc.BillingServicer):
    def __init__(self, core: BillingCore, guard: AdminGuard, budgets: Budgets) -> None:
        self._core = core
        self._guard = guard
        self._budgets = budgets

    async def SetPrice(
        self, request: billing_pb2.SetPriceRequest, context: Context
    ) -> billing_pb2.Price:
        await self._guard.operator(context, "SetPrice")
        price = await self._core.set_price(
            billing_convert.new_price_from_proto(request.price), backdate=request.backdate
        )
        return billing_convert.price_to_proto(price)

    async def ListPrices(
        self, request: billing_pb2.ListPricesRequest, context: Context
    ) -> billing_pb2.ListPricesResponse:
        await self._guard.anyone(context)
        if len(request.model.encode()) > MAX_MODEL_NAME_BYTES:
            raise InvalidArgumentError("model", f"must be at most {MAX_MODEL_NAME_BYTES} bytes")
        prices = await self._core.list_prices(request.model, request.include_history)
        return billing_pb2.ListPricesResponse(
            prices=[billing_convert.price_to_proto(p) for p in prices]
        )

    async def GetStatement(
        self, request: billing_pb2.GetStatementRequest, context: Context
    ) -> billing_pb2.Statement:
        await self._guard.of_tenant(context, request.tenant_id)
        check_id("tenant_id", request.tenant_id)
        statement = await self._core.statement(request.tenant_id, request.month)
        return billing_convert.statement_to_proto(statement)

    async def ExportUsage(
        self, request: billing_pb2.ExportUsageRequest, context: Context
    ) -> AsyncIterator[metering_pb2.UsageRecord]:
        await self._guard.of_tenant(context, request.tenant_id)
        check_id("tenant_id", request.tenant_id)
        async for record in self._core.export(request.tenant_id, request.month):
            yield convert.usage_to_proto(record)

    async def SetBudget(
        self, request: billing_pb2.SetBudgetRequest, context: Context
    ) -> billing_pb2.Budget:
        await self._guard.operator(context, "SetBudget")
        check_id("budget.tenant_id", request.budget.tenant_id)
        if request.budget.key_id:
            # As Reserve's key_id: a hostile id is refused before the store looks it up.
            check_id("budget.key_id", request.budget.key_id)
        budget = await self._budgets.set(billing_convert.budget_from_proto(request.budget))
        return billing_convert.budget_to_proto(budget)

    async def ListBudgets(
        self, request: billing_pb2.ListBudgetsRequest, context: Context
    ) -> billing_pb2.ListBudgetsResponse:
        if request.tenant_id:
            await self._guard.of_tenant(context, request.tenant_id)
            check_id("tenant_id", request.tenant_id)
        else:
            await self._guard.operator(context, "ListBudgets of every tenant")
        found = await self._budgets.list(request.tenant_id or None)
        return billing_pb2.ListBudgetsResponse(
            budgets=[billing_convert.budget_to_proto(s.budget, s) for s in found]
        )
