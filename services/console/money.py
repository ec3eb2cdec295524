"""Money as the console shows it. Amounts arrive as integer micro-units and
are computed in them (the price book's own arithmetic, services/auth/pricing);
`Decimal` only turns them into text, so nothing shown was ever a float."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from maas.v1 import billing_pb2, generation_pb2
from services.auth.pricing import micros
from services.common.usage_terms import display

# What a price or a cost shows when the book has none in force: said, never "0".
UNPRICED = "not priced"
# Places a currency amount keeps at least (cents), whatever its zeros.
MIN_PLACES = 2


def amount_text(amount_micros: int, currency: str = "") -> str:
    """Micro-units as currency text: at least cents, every significant
    micro-unit kept ("0.15 USD", "0.000005 USD")."""
    value = display(amount_micros).normalize()
    exponent = value.as_tuple().exponent
    places = max(MIN_PLACES, -exponent if isinstance(exponent, int) else MIN_PLACES)
    text = f"{value:.{places}f}"
    return f"{text} {currency}" if currency else text


def amount_number(amount_micros: int) -> str:
    """Micro-units as a decimal number in a string, for chart data (exact in
    the JSON; the chart's own float is display only)."""
    return str(display(amount_micros))


@dataclass(frozen=True)
class PriceRow:
    model: str
    adapter: str
    currency: str
    prompt: str
    cached: str
    completion: str
    effective: str
    created: str


def _when(stamp: datetime) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def price_row(price: billing_pb2.Price) -> PriceRow:
    return PriceRow(
        model=price.model,
        adapter=price.adapter,
        currency=price.currency,
        prompt=amount_text(price.prompt_micros_per_million, price.currency),
        cached=amount_text(price.cached_prompt_micros_per_million, price.currency),
        completion=amount_text(price.completion_micros_per_million, price.currency),
        effective=_when(price.effective_time.ToDatetime(tzinfo=UTC)),
        created=_when(price.create_time.ToDatetime(tzinfo=UTC)),
    )


def price_at(versions: list[billing_pb2.Price], at: datetime) -> billing_pb2.Price | None:
    """The version in force at `at`: the newest whose effective time is not after it."""
    in_force = [v for v in versions if v.effective_time.ToDatetime(tzinfo=UTC) <= at]
    return max(in_force, key=lambda v: v.effective_time.ToDatetime(tzinfo=UTC), default=None)


def call_cost(usage: generation_pb2.Usage, price: billing_pb2.Price) -> int:
    """What one call's tokens cost at `price`, in micro-units: the exact sum
    per token kind, rounded half up once, as the ledger bills a record."""
    uncached = usage.prompt_tokens - usage.cached_tokens
    exact = (
        uncached * price.prompt_micros_per_million
        + usage.cached_tokens * price.cached_prompt_micros_per_million
        + usage.completion_tokens * price.completion_micros_per_million
    )
    return micros(exact)


def units_micros(raw: Decimal) -> int:
    """An amount typed in currency units ("25.50"), as micro-units;
    ValueError when it is finer than a micro-unit."""
    scaled = raw.scaleb(6)
    if scaled != scaled.to_integral_value():
        raise ValueError("finer than a micro-unit")
    return int(scaled)
