"""`maas admin budget set|list`: money budgets of a tenant or of one of its
API keys, from the auth service's maas.v1.Billing (set: the operator; list:
the operator, or the tenant's admin key for its own). Amounts are given and
shown in the currency ("25.50"), carried as exact micro-units."""

from __future__ import annotations

from typing import Annotated

import typer

from maas.v1 import billing_pb2
from maas_cli.admin_cli import AuthOption, TokenOption, admin_rpc
from maas_cli.billing_cli import billing_stub, micros
from maas_cli.output import JsonOption, bad_usage, print_rows
from maas_cli.statement_report import rfc3339
from services.common.usage_terms import money

budget_app = typer.Typer(
    help="Money budgets: per tenant or per API key, monthly and lifetime.", no_args_is_help=True
)
COLUMNS = ("tenant_id", "key_id", "monthly_limit", "month_spent", "total_limit", "total_spent",
           "soft_threshold_percent", "update_time")  # fmt: skip


def budget_dict(b: billing_pb2.Budget) -> dict[str, str | int]:
    return {
        "tenant_id": b.tenant_id,
        "key_id": b.key_id,
        "monthly_limit": money(b.monthly_limit_micros),
        "month_spent": money(b.month_spent_micros),
        "total_limit": money(b.total_limit_micros),
        "total_spent": money(b.total_spent_micros),
        "soft_threshold_percent": b.soft_threshold_percent,
        "monthly_limit_micros": b.monthly_limit_micros,
        "month_spent_micros": b.month_spent_micros,
        "total_limit_micros": b.total_limit_micros,
        "total_spent_micros": b.total_spent_micros,
        "update_time": rfc3339(b.update_time),
    }


def _show(budgets: list[billing_pb2.Budget], as_json: bool) -> None:
    print_rows([budget_dict(b) for b in budgets], COLUMNS, as_json)


@budget_app.command("set")
def budget_set(
    tenant: Annotated[str, typer.Option(help="the tenant")],
    key: Annotated[str, typer.Option(help="one of its API keys (default: the tenant's)")] = "",
    monthly: Annotated[str, typer.Option(help="most spend per UTC month, e.g. 25.50")] = "0",
    total: Annotated[str, typer.Option(help="most spend ever")] = "0",
    soft: Annotated[int, typer.Option(help="percent of a limit that raises an alert")] = 0,
    as_json: JsonOption = False,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
) -> None:
    """Sets (replaces) a budget (operator only); no limits removes it."""
    if not 0 <= soft <= 100:
        bad_usage("--soft must be a percent, 0 to 100")
    budget = billing_pb2.Budget(
        tenant_id=tenant,
        key_id=key,
        monthly_limit_micros=micros("--monthly", monthly),
        total_limit_micros=micros("--total", total),
        soft_threshold_percent=soft,
    )
    request = billing_pb2.SetBudgetRequest(budget=budget)
    set_ = admin_rpc(
        auth, admin_token, billing_stub, lambda s, md: s.SetBudget(request, metadata=md)
    )
    _show([set_], as_json)


@budget_app.command("list")
def budget_list(
    tenant: Annotated[str, typer.Option(help="one tenant (default: every tenant's)")] = "",
    as_json: JsonOption = False,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
) -> None:
    """Lists budgets with what the ledger says each has spent."""
    request = billing_pb2.ListBudgetsRequest(tenant_id=tenant)
    reply = admin_rpc(
        auth, admin_token, billing_stub, lambda s, md: s.ListBudgets(request, metadata=md)
    )
    _show(list(reply.budgets), as_json)


def register(admin: typer.Typer) -> None:
    """Adds `maas admin budget`."""
    admin.add_typer(budget_app, name="budget")
