"""Form input turned into requests, each field checked with a message that
names it. The gateway checks every generation again: this is for people,
so a typo is answered beside the field instead of as a gRPC status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation

from google.protobuf.timestamp_pb2 import Timestamp

from maas.v1 import billing_pb2, generation_pb2
from services.console.money import units_micros

# The largest values proto integer fields carry: past them protobuf raises
# ValueError, which would answer 500 instead of naming the field.
INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
# Stop strings a form may give; the gateway takes more, a person types a few.
MAX_STOP_STRINGS = 4


class FormError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _optional_float(field: str, raw: str, low: float, high: float) -> float | None:
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise FormError(field, "a number, e.g. 0.7") from None
    if not low <= value <= high:
        raise FormError(field, f"between {low:g} and {high:g}")
    return value


def _optional_int(field: str, raw: str, low: int, high: int | None = None) -> int | None:
    if not raw.strip():
        return None
    try:
        value = int(raw)
    except ValueError:
        raise FormError(field, "a whole number") from None
    if value < low:
        raise FormError(field, f"at least {low}")
    if high is not None and value > high:
        raise FormError(field, f"at most {high}")
    return value


@dataclass(frozen=True)
class PlaygroundForm:
    model: str
    prompt: str
    system: str = ""
    temperature: str = ""
    max_tokens: str = ""
    stop: str = ""
    seed: str = ""

    def request(self) -> generation_pb2.GenerateRequest:
        if not self.model:
            raise FormError("model", "choose a model")
        if not self.prompt.strip():
            raise FormError("prompt", "say something")
        turns = []
        if self.system.strip():
            turns.append(generation_pb2.ChatMessage(role="system", content=self.system))
        turns.append(generation_pb2.ChatMessage(role="user", content=self.prompt))
        request = generation_pb2.GenerateRequest(
            model=self.model, messages=generation_pb2.ChatMessages(messages=turns)
        )
        # 2: the upper end of OpenAI's temperature range, which people know.
        temperature = _optional_float("temperature", self.temperature, 0.0, 2.0)
        if temperature is not None:
            request.temperature = temperature
        max_tokens = _optional_int("max_tokens", self.max_tokens, 1, UINT32_MAX)
        if max_tokens is not None:
            request.max_tokens = max_tokens
        seed = _optional_int("seed", self.seed, 0, UINT64_MAX)
        if seed is not None:
            request.seed = seed
        stops = [line for line in self.stop.splitlines() if line]
        if len(stops) > MAX_STOP_STRINGS:
            raise FormError("stop", f"at most {MAX_STOP_STRINGS}, one a line")
        request.stop.extend(stops)
        return request


def key_expiry(raw: str, now: datetime) -> datetime | None:
    """A key's expiry from a date field (the start of that day, UTC); empty: never."""
    if not raw.strip():
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise FormError("expires", "a date, YYYY-MM-DD") from None
    at = datetime.combine(day, time(), tzinfo=UTC)
    if at <= now:
        raise FormError("expires", "a day after today")
    return at


def _amount(field: str, raw: str, example: str) -> Decimal | None:
    """A non-negative amount typed in currency units; None when empty."""
    if not raw.strip():
        return None
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise FormError(field, f"a number, e.g. {example}") from None
    if not value.is_finite() or value < 0:
        raise FormError(field, "zero or more")
    return value


def _micros(field: str, value: Decimal) -> int:
    """An amount in currency units as micro-units for a proto int64 field."""
    try:
        micros = units_micros(value)
    except ValueError:
        raise FormError(field, "at most 6 decimal places (a micro-unit)") from None
    if micros > INT64_MAX:
        # The proto's int64 cannot carry it (protobuf would raise ValueError,
        # a 500); auth names its own, lower bound.
        raise FormError(field, "too large")
    return micros


def _price_per_million(field: str, raw: str) -> int:
    value = _amount(field, raw, "0.15")
    if value is None:
        raise FormError(field, "a price per million tokens, e.g. 0.15 (0 for free)")
    return _micros(field, value)


@dataclass(frozen=True)
class PriceForm:
    """A new price version as an operator types it: prices in currency
    units per million tokens, the effective time in UTC (empty: now)."""

    model: str
    adapter: str = ""
    currency: str = ""
    prompt: str = ""
    cached_prompt: str = ""
    completion: str = ""
    effective: str = ""

    def price(self) -> billing_pb2.Price:
        if not self.model.strip():
            raise FormError("model", "required")
        currency = self.currency.strip().upper()
        if not currency:
            raise FormError("currency", "an ISO 4217 code, e.g. USD")
        price = billing_pb2.Price(
            model=self.model.strip(),
            adapter=self.adapter.strip(),
            currency=currency,
            prompt_micros_per_million=_price_per_million("prompt", self.prompt),
            cached_prompt_micros_per_million=_price_per_million(
                "cached_prompt", self.cached_prompt
            ),
            completion_micros_per_million=_price_per_million("completion", self.completion),
        )
        if self.effective.strip():
            try:
                at = datetime.fromisoformat(self.effective.strip())
            except ValueError:
                raise FormError("effective", "a time, YYYY-MM-DDTHH:MM (UTC)") from None
            stamp = Timestamp()
            stamp.FromDatetime(at.replace(tzinfo=UTC) if at.tzinfo is None else at)
            price.effective_time.CopyFrom(stamp)
        return price


# The price form's field for each field auth names in a refusal.
PRICE_FIELDS = {
    "price.model": "model",
    "price.adapter": "adapter",
    "price.currency": "currency",
    "price.prompt_micros_per_million": "prompt",
    "price.cached_prompt_micros_per_million": "cached_prompt",
    "price.completion_micros_per_million": "completion",
    "price.effective_time": "effective",
}


def _limit_micros(field: str, raw: str) -> int:
    """A budget limit typed in currency units; empty or 0: no limit."""
    value = _amount(field, raw, "25.50")
    return 0 if value is None else _micros(field, value)


@dataclass(frozen=True)
class BudgetForm:
    """A tenant's or key's money budget as an operator types it: limits in
    currency units (empty: none), the soft threshold in percent."""

    tenant: str
    key: str = ""
    monthly: str = ""
    total: str = ""
    soft: str = ""

    def budget(self) -> billing_pb2.Budget:
        if not self.tenant.strip():
            raise FormError("tenant", "required")
        # 100: a threshold is a share of the limit, never past it.
        soft = _optional_int("soft", self.soft, 0)
        if soft is not None and soft > 100:
            raise FormError("soft", "a percent, 0 to 100")
        return billing_pb2.Budget(
            tenant_id=self.tenant.strip(),
            key_id=self.key.strip(),
            monthly_limit_micros=_limit_micros("monthly", self.monthly),
            total_limit_micros=_limit_micros("total", self.total),
            soft_threshold_percent=soft or 0,
        )


# The budget form's field for each field auth names in a refusal.
BUDGET_FIELDS = {
    "budget.tenant_id": "tenant",
    "budget.key_id": "key",
    "budget.monthly_limit_micros": "monthly",
    "budget.total_limit_micros": "total",
    "budget.soft_threshold_percent": "soft",
}
