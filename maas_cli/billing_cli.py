"""`maas admin price set|list` and `maas statement`: the price book and a
tenant's monthly bill, from the auth service's maas.v1.Billing with an admin
credential (the operator token, or a tenant's admin-scoped key for its own
statement; any API key may list prices)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, DecimalException
from typing import Annotated, TypeVar

import grpc
import typer

from maas.v1 import billing_pb2, billing_pb2_grpc
from maas_cli import statement_report
from maas_cli.admin_cli import AuthOption, TokenOption, admin_rpc
from maas_cli.output import JsonOption, bad_usage, print_rows
from services.common.usage_terms import money

price_app = typer.Typer(help="The price book: per model, per million tokens.", no_args_is_help=True)
T = TypeVar("T")
MICROS = Decimal(1_000_000)  # micro-units in one unit of the currency
# The amounts' proto fields are int64: a value past them is refused here, not
# sent (protobuf would raise) and never turned into a huge int.
INT64 = 2**63


def billing_stub(channel: grpc.aio.Channel) -> billing_pb2_grpc.BillingAsyncStub:
    return billing_pb2_grpc.BillingStub(channel)


def micros(option: str, text: str) -> int:
    """A price per million tokens given in the currency ("0.15") as exact
    micro-units (150000); never through a float."""
    try:
        value = Decimal(text) * MICROS
    except DecimalException:  # not a number, or past what Decimal holds
        bad_usage(f"{option} must be a number, e.g. 0.15")
    if not value.is_finite():
        bad_usage(f"{option} must be a number, e.g. 0.15")
    if value != value.to_integral_value():
        bad_usage(f"{option} has more than 6 decimal places")
    if not -INT64 <= value < INT64:
        bad_usage(f"{option} is out of range")
    return int(value)


def price_dict(p: billing_pb2.Price) -> dict[str, str | int]:
    return {
        "model": p.model,
        "adapter": p.adapter,
        "currency": p.currency,
        "prompt_per_million": money(p.prompt_micros_per_million),
        "cached_prompt_per_million": money(p.cached_prompt_micros_per_million),
        "completion_per_million": money(p.completion_micros_per_million),
        "prompt_micros_per_million": p.prompt_micros_per_million,
        "cached_prompt_micros_per_million": p.cached_prompt_micros_per_million,
        "completion_micros_per_million": p.completion_micros_per_million,
        "effective_time": statement_report.rfc3339(p.effective_time),
    }


def _show_prices(prices: list[billing_pb2.Price], as_json: bool) -> None:
    columns = ("model", "adapter", "currency", "prompt_per_million",
               "cached_prompt_per_million", "completion_per_million", "effective_time")  # fmt: skip
    print_rows([price_dict(p) for p in prices], columns, as_json)


@price_app.command("set")
def price_set(
    model: str,
    prompt: Annotated[str, typer.Option(help="per million prompt tokens, e.g. 0.15")],
    completion: Annotated[str, typer.Option(help="per million completion tokens")],
    cached_prompt: Annotated[
        str | None, typer.Option(help="per million cached prompt tokens (default: --prompt)")
    ] = None,
    adapter: Annotated[str, typer.Option(help="a LoRA adapter of the model")] = "",
    currency: Annotated[str, typer.Option(help="ISO 4217 code")] = "USD",
    effective: Annotated[
        datetime | None, typer.Option(help="when it takes effect (UTC; default: now)")
    ] = None,
    backdate: Annotated[
        bool, typer.Option(help="allow a past --effective for a model with no price yet")
    ] = False,
    as_json: JsonOption = False,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
) -> None:
    """Sets a new price version (operator only); earlier versions keep billing their time."""
    price = billing_pb2.Price(
        model=model,
        adapter=adapter,
        currency=currency,
        prompt_micros_per_million=micros("--prompt", prompt),
        cached_prompt_micros_per_million=micros("--cached-prompt", cached_prompt or prompt),
        completion_micros_per_million=micros("--completion", completion),
    )
    if effective is not None:
        price.effective_time.FromDatetime(effective.replace(tzinfo=effective.tzinfo or UTC))
    request = billing_pb2.SetPriceRequest(price=price, backdate=backdate)
    set_ = admin_rpc(
        auth, admin_token, billing_stub, lambda s, md: s.SetPrice(request, metadata=md)
    )
    _show_prices([set_], as_json)


@price_app.command("list")
def price_list(
    model: Annotated[str, typer.Option(help="one model or adapter")] = "",
    history: Annotated[bool, typer.Option(help="every version, not only those in force")] = False,
    as_json: JsonOption = False,
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
) -> None:
    """Lists the price book: the version in force per model, or every version."""
    request = billing_pb2.ListPricesRequest(model=model, include_history=history)
    reply = admin_rpc(
        auth, admin_token, billing_stub, lambda s, md: s.ListPrices(request, metadata=md)
    )
    _show_prices(list(reply.prices), as_json)


def statement(
    tenant: Annotated[str, typer.Option(help="the tenant billed")],
    month: Annotated[str, typer.Option(help="UTC calendar month, e.g. 2026-11")],
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or cloudevents")] = "table",
    auth: AuthOption = "127.0.0.1:50052",
    admin_token: TokenOption = None,
) -> None:
    """A tenant's monthly statement (operator, or the tenant's admin key); with
    --format cloudevents, its usage records as CloudEvents, one a line."""
    if fmt not in statement_report.FORMATS:
        bad_usage(f"--format must be one of {', '.join(statement_report.FORMATS)}")
    if fmt == "cloudevents":
        request = billing_pb2.ExportUsageRequest(tenant_id=tenant, month=month)

        async def export(
            stub: billing_pb2_grpc.BillingAsyncStub, md: tuple[tuple[str, str]]
        ) -> None:
            # Printed as they stream: a busy month never sits in memory whole.
            async for record in stub.ExportUsage(request, metadata=md):
                typer.echo(json.dumps(statement_report.cloudevent(record), sort_keys=True))

        admin_rpc(auth, admin_token, billing_stub, export)
        return
    query = billing_pb2.GetStatementRequest(tenant_id=tenant, month=month)
    reply = admin_rpc(
        auth, admin_token, billing_stub, lambda s, md: s.GetStatement(query, metadata=md)
    )
    typer.echo(statement_report.render(reply, fmt))  # type: ignore[arg-type]


def register(admin: typer.Typer, app: typer.Typer) -> None:
    """Adds `maas admin price` and `maas statement`."""
    admin.add_typer(price_app, name="price")
    app.command("statement")(statement)
