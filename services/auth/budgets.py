"""Money budgets: what a tenant, or one of its API keys, may spend per month
and ever, enforced by the quota state with the same leases as token budgets.

A Reserve holds its worst-case cost (estimated prompt tokens at the prompt
price plus the most completion tokens at the completion price, prices in
force now) against every budget of its tenant and key; a commit charges the
exact cost of what the request produced (prompt, cached prompt and
completion tokens, each at its price in the lease) and gives the rest back;
a release gives it all back. Spent is the larger of the state's counter and
the ledger's cost, as for token budgets: the ledger may not have a commit's
record yet, and the counter may not cover the whole period (a restart).

Amounts in the state are exact: millionths of a micro-unit (tokens x price
per million tokens, as pricing.py's exact costs), so a lease never rounds.
A model with no price in force costs 0: its requests pass a budget that is
not yet spent, and are never charged to it (statements name it unpriced).

A price version that takes effect while a request runs: the counter charges
it at the price of its start (in its lease), the ledger at its end; spent is
the larger, so the budget never takes the cheaper."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from services.auth.pricing import PER_MILLION, Price, in_force, micros
from services.common.errors import InvalidArgumentError, ResourceExhaustedError

if TYPE_CHECKING:  # the store's protocol names Budget: imported for types only
    from services.auth.store import AuthStore

__all__ = [
    "Budget",
    "BudgetCheck",
    "Crossing",
    "Period",
    "Rates",
    "Usage",
    "check_budget",
    "ledger_cost",
    "price_at",
]


class Period(enum.StrEnum):
    MONTHLY = "monthly"
    TOTAL = "total"


@dataclass(frozen=True, slots=True)
class Budget:
    tenant_id: str
    key_id: str  # "" for the tenant's own budget
    monthly_limit: int  # micro-units; 0: none
    total_limit: int  # micro-units; 0: none
    soft_percent: int  # 0: no alert
    updated_at: datetime

    @property
    def empty(self) -> bool:
        return not self.monthly_limit and not self.total_limit

    def limit(self, period: Period) -> int:
        return self.monthly_limit if period is Period.MONTHLY else self.total_limit


def subject(key_id: str, period: Period) -> str:
    """How a QuotaFailure, a commit's crossing and an alert name the budget."""
    return f"budget:key:{key_id}:{period}" if key_id else f"budget:tenant:{period}"


# The state counts exact amounts in 64-bit integers (Redis HINCRBY): a limit
# leaves half of int64 as headroom for what the last leases may overrun it by.
MAX_LIMIT_MICROS = (2**63 - 1) // PER_MILLION // 2


# The most tokens one request may reserve or commit, and (pricing.py) the
# dearest price: their product, a request's exact cost, stays under 2**61, so
# the 64-bit counters keep their headroom.
MAX_REQUEST_TOKENS = 2**31


def _check_tokens(field: str, value: int) -> None:
    if value > MAX_REQUEST_TOKENS:
        raise InvalidArgumentError(field, f"must be at most {MAX_REQUEST_TOKENS}")


def check_estimate(estimated: int, prompt: int, max_completion: int) -> None:
    """INVALID_ARGUMENT naming the first bad field of a Reserve's estimate."""
    _check_tokens("estimated_tokens", estimated)
    _check_tokens("prompt_tokens", prompt)
    _check_tokens("max_completion_tokens", max_completion)
    if prompt + max_completion > estimated:
        raise InvalidArgumentError(
            "max_completion_tokens", "prompt_tokens plus it exceeds estimated_tokens"
        )


def check_budget(budget: Budget) -> None:
    for field, value in (
        ("budget.monthly_limit_micros", budget.monthly_limit),
        ("budget.total_limit_micros", budget.total_limit),
    ):
        if value < 0:
            raise InvalidArgumentError(field, "must not be negative")
        if value > MAX_LIMIT_MICROS:
            raise InvalidArgumentError(field, f"must be at most {MAX_LIMIT_MICROS} micro-units")
    if not 0 <= budget.soft_percent <= 100:
        raise InvalidArgumentError("budget.soft_threshold_percent", "must be 0 to 100")


@dataclass(frozen=True, slots=True)
class Usage:
    """What a commit charges: prompt tokens (cached ones included), of them
    the cached, and completion. Without a split (`tokens` only) every token
    is charged at the dearer of the prompt and completion prices."""

    tokens: int
    prompt: int = 0
    cached: int = 0
    completion: int = 0

    @property
    def split(self) -> bool:
        return bool(self.prompt or self.completion)

    def check(self) -> None:
        """INVALID_ARGUMENT naming the first bad field of a Commit's usage."""
        _check_tokens("used_tokens", self.tokens)
        _check_tokens("prompt_tokens", self.prompt)
        _check_tokens("completion_tokens", self.completion)
        if self.cached > self.prompt:
            raise InvalidArgumentError("cached_tokens", "exceeds prompt_tokens")
        if self.prompt + self.completion > self.tokens:
            raise InvalidArgumentError(
                "completion_tokens", "prompt_tokens plus it exceeds used_tokens"
            )


@dataclass(frozen=True, slots=True)
class Rates:
    """The prices a lease charges at: micro-units per million tokens."""

    prompt: int = 0
    cached_prompt: int = 0
    completion: int = 0

    @classmethod
    def of(cls, price: Price | None) -> Rates:
        if price is None:
            return cls()
        return cls(price.prompt, price.cached_prompt, price.completion)

    @property
    def dearer(self) -> int:
        return max(self.prompt, self.cached_prompt, self.completion)

    def worst_case(self, estimated: int, prompt: int, max_completion: int) -> int:
        """The most a request may cost, exact: with no split, every estimated
        token at the dearest price."""
        if not prompt and not max_completion:
            return estimated * self.dearer
        return prompt * max(self.prompt, self.cached_prompt) + max_completion * self.completion

    def cost(self, usage: Usage) -> int:
        """What `usage` costs, exact."""
        if not usage.split:
            return usage.tokens * self.dearer
        cached = min(usage.cached, usage.prompt)
        return (
            (usage.prompt - cached) * self.prompt
            + cached * self.cached_prompt
            + usage.completion * self.completion
        )


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """One limit of one budget, as the quota state checks and charges it;
    amounts exact (millionths of a micro-unit)."""

    subject: str
    scope: str  # whose leases count against it: "" the tenant's, else this key's
    counter: str  # the state's counter: "<scope>|monthly:YYYY-MM" or "<scope>|total"
    limit: int
    soft: int  # 0: no alert
    ledger_spent: int
    retry_after_s: float  # 0 for a lifetime limit: it never comes back

    def refusal(self) -> ResourceExhaustedError:
        what = "monthly" if ":monthly" in self.subject else "lifetime"
        owner = "the API key's" if self.scope else "the tenant's"
        return ResourceExhaustedError(
            f"{owner} {what} budget is spent",
            retry_after_s=self.retry_after_s,
            subject=self.subject,
        )


@dataclass(frozen=True, slots=True)
class Crossing:
    """A commit made a budget's spend cross its soft threshold (once per
    budget and period)."""

    subject: str
    tenant_id: str
    key_id: str
    spent: int  # exact
    soft: int  # exact
    limit: int  # exact

    @property
    def spent_micros(self) -> int:
        return micros(self.spent)

    @property
    def soft_micros(self) -> int:
        return micros(self.soft)

    @property
    def limit_micros(self) -> int:
        return micros(self.limit)


def exact(amount_micros: int) -> int:
    """Micro-units to the state's exact unit."""
    return amount_micros * PER_MILLION


def soft_of(limit_micros: int, percent: int) -> int:
    """The threshold of `percent` of a limit, exact (no rounding: x1e6/100)."""
    return exact(limit_micros) * percent // 100 if percent else 0


def price_at(prices: list[Price], name: str, at: datetime) -> Price | None:
    """The price version of `name` (a model or an adapter name) in force at `at`."""
    versions = [p for p in prices if p.name == name and p.effective_from <= at]
    return max(versions, key=lambda p: p.effective_from) if versions else None


async def ledger_cost(
    store: AuthStore,
    tenant_id: str,
    key_id: str,
    since: datetime | None,
    *,
    book: dict[tuple[str, datetime], Price] | None = None,
) -> int:
    """What the ledger's records since `since` cost, exact, each at the
    price in force at its end (of one key when `key_id` is set). `book`
    (pricing.in_force of every price) spares the store the price list when
    the caller prices several limits at once."""
    lines = await store.usage_lines(tenant_id, since, None, None, key_id=key_id)
    if not lines:
        return 0
    if book is None:
        book = in_force(await store.list_prices())
    total = 0
    for line in lines:
        price = None if line.priced_at is None else book.get((line.model, line.priced_at))
        total += line.exact_cost(price)
    return total
