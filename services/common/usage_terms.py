"""Terms every face of usage shares (the CLI, the gateway's `/v1/usage` and
model list, the console, the price book): the groupings a caller names, the
name a price bills under, and how a micro-unit amount reads."""

from __future__ import annotations

from decimal import Decimal

from maas.v1 import billing_pb2, usage_pb2

# A grouping's name, as a caller types it, to its enum.
GROUPINGS = {
    "model": usage_pb2.USAGE_GROUPING_MODEL,
    "hour": usage_pb2.USAGE_GROUPING_HOUR,
    "day": usage_pb2.USAGE_GROUPING_DAY,
    "month": usage_pb2.USAGE_GROUPING_MONTH,
}


def display(amount_micros: int) -> Decimal:
    """Micro-units as a Decimal number of currency units (display only)."""
    return Decimal(amount_micros).scaleb(-6)


def money(micros: int) -> str:
    """Micro-units as the currency's decimal number, all six places kept."""
    return f"{display(micros):.6f}"


def billed_name(price: billing_pb2.Price) -> str:
    """The name a price applies to (usage records are named so): an
    adapter's own, else its model's."""
    return price.adapter or price.model
