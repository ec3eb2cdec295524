"""The price book's objects and the money arithmetic of billing.

Money is integer micro-units of the currency (1 USD = 1,000,000); a price is
micro-units per million tokens. `tokens * price` is therefore the exact cost
in millionths of a micro-unit: sums are taken of that, and rounded to a whole
micro-unit once, where an amount is shown (services/common/usage_terms.display)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from services.common.errors import InvalidArgumentError
from services.common.generation_limits import MAX_MODEL_NAME_BYTES

MICROS = 1_000_000  # micro-units in one unit of the currency
PER_MILLION = 1_000_000  # prices are per million tokens
_CURRENCY = re.compile(r"^[A-Z]{3}$")  # ISO 4217 alphabetic codes
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class TokenKind(enum.StrEnum):
    PROMPT = "prompt"
    CACHED_PROMPT = "cached_prompt"
    COMPLETION = "completion"


@dataclass(frozen=True, slots=True)
class Price:
    """One version of a model's (or one adapter's) price."""

    model: str
    adapter: str  # "" for the base model
    currency: str
    prompt: int  # micro-units per million prompt tokens not served from the cache
    cached_prompt: int  # micro-units per million prompt tokens served from the cache
    completion: int  # micro-units per million completion tokens
    effective_from: datetime
    created_at: datetime

    @property
    def name(self) -> str:
        """What usage records of it are named: the adapter, else the model."""
        return self.adapter or self.model

    def per_million(self, kind: TokenKind) -> int:
        return {
            TokenKind.PROMPT: self.prompt,
            TokenKind.CACHED_PROMPT: self.cached_prompt,
            TokenKind.COMPLETION: self.completion,
        }[kind]


@dataclass(frozen=True, slots=True)
class NewPrice:
    """A SetPrice request: a price version before the book takes it."""

    model: str
    adapter: str
    currency: str
    prompt: int
    cached_prompt: int
    completion: int
    effective_from: datetime | None  # None: when the book takes it

    @property
    def name(self) -> str:
        return self.adapter or self.model


@dataclass(frozen=True, slots=True)
class UsageLine:
    """A ledger sum: one bucket's records of one model billed at one price
    version (`priced_at` its effective time; None where none was in force)."""

    key: str  # the bucket: a model, a period's start, or "" for the whole range
    model: str
    priced_at: datetime | None
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    def tokens(self, kind: TokenKind) -> int:
        return {
            TokenKind.PROMPT: self.prompt_tokens - self.cached_tokens,
            TokenKind.CACHED_PROMPT: self.cached_tokens,
            TokenKind.COMPLETION: self.completion_tokens,
        }[kind]

    def exact_cost(self, price: Price | None) -> int:
        """The cost in millionths of a micro-unit (0 without a price)."""
        if price is None:
            return 0
        return sum(self.tokens(kind) * price.per_million(kind) for kind in TokenKind)


def micros(exact: int) -> int:
    """An exact cost (millionths of a micro-unit) to whole micro-units, half up."""
    return (exact + PER_MILLION // 2) // PER_MILLION


def amount(tokens: int, per_million: int) -> int:
    """What `tokens` cost at `per_million`, in whole micro-units, half up."""
    return micros(tokens * per_million)


# The dearest price, $1000 per million tokens in USD: times the most tokens a
# request may hold (budgets.MAX_REQUEST_TOKENS), an exact cost under 2**61.
MAX_PRICE_MICROS_PER_MILLION = 10**9


def check_price(price: NewPrice) -> None:
    """INVALID_ARGUMENT naming the first bad field of a SetPrice request."""
    if not price.model.strip():
        raise InvalidArgumentError("price.model", "required")
    for field, name in (("price.model", price.model), ("price.adapter", price.adapter)):
        if len(name.encode()) > MAX_MODEL_NAME_BYTES:
            raise InvalidArgumentError(field, f"must be at most {MAX_MODEL_NAME_BYTES} bytes")
    if not _CURRENCY.match(price.currency):
        raise InvalidArgumentError("price.currency", "must be an ISO 4217 code: 3 capital letters")
    for field, value in (
        ("price.prompt_micros_per_million", price.prompt),
        ("price.cached_prompt_micros_per_million", price.cached_prompt),
        ("price.completion_micros_per_million", price.completion),
    ):
        if value < 0:
            raise InvalidArgumentError(field, "must not be negative")
        if value > MAX_PRICE_MICROS_PER_MILLION:
            raise InvalidArgumentError(field, f"must be at most {MAX_PRICE_MICROS_PER_MILLION}")


def month_range(month: str) -> tuple[datetime, datetime]:
    """ "YYYY-MM" to [its first instant, the next month's first instant), UTC."""
    matched = _MONTH.match(month)
    if matched is None or not 1 <= int(matched[2]) <= 12:
        raise InvalidArgumentError("month", "must be a month as YYYY-MM")
    year, number = int(matched[1]), int(matched[2])
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


def in_force(prices: list[Price]) -> dict[tuple[str, datetime], Price]:
    """The book by (billed name, effective time): how a UsageLine finds its price."""
    return {(p.name, p.effective_from): p for p in prices}
