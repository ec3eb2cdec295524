"""Billing: the price book, cost on usage queries, and monthly statements.

Cost is computed when asked, from the ledger and the price book, never stored
on a record: a record is superseded while its stream runs (RUNNING progress
records, then the final one), so a stored cost would have to be recomputed on
every supersede, on the ledger's hot write path; and the book only ever gains
versions that start after what they could reprice (see `set_price`), so the
same query gives the same money whenever it runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from services.auth.budgets import Budget, check_budget, ledger_cost
from services.auth.models import Grouping, UsageRecord
from services.auth.pricing import (
    NewPrice,
    Price,
    TokenKind,
    UsageLine,
    amount,
    check_price,
    in_force,
    micros,
    month_range,
)
from services.auth.quota import month_start
from services.auth.store import AuthStore
from services.common.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError

Clock = Callable[[], datetime]
# Sorts unpriced usage (no price version) before every version.
_NO_VERSION = datetime.min.replace(tzinfo=UTC)
# Records read from the store per page while exporting: a month of a busy
# tenant streams without holding it all in memory.
EXPORT_PAGE = 1000


@dataclass(frozen=True, slots=True)
class CostedBucket:
    key: str
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    unpriced: bool = False


@dataclass(frozen=True, slots=True)
class CostedUsage:
    """Totals over a range (`total`, key "") and its buckets, with cost."""

    tenant_id: str
    currency: str
    total: CostedBucket
    buckets: list[CostedBucket]
    unpriced_models: list[str]


@dataclass(frozen=True, slots=True)
class StatementLine:
    model: str
    kind: TokenKind
    tokens: int
    unit_price: int  # micro-units per million tokens; 0 when unpriced
    amount_micros: int
    priced_at: datetime | None  # the price version's effective time


@dataclass(frozen=True, slots=True)
class Statement:
    tenant_id: str
    month: str
    currency: str
    lines: list[StatementLine]
    requests: int
    total_micros: int
    unpriced_models: list[str] = field(default_factory=list)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _sum(key: str, lines: list[UsageLine], book: dict[tuple[str, datetime], Price]) -> CostedBucket:
    exact = 0
    unpriced = False
    for line in lines:
        price = book.get((line.model, line.priced_at)) if line.priced_at else None
        unpriced = unpriced or price is None
        exact += line.exact_cost(price)
    return CostedBucket(
        key=key,
        requests=sum(line.requests for line in lines),
        prompt_tokens=sum(line.prompt_tokens for line in lines),
        cached_tokens=sum(line.cached_tokens for line in lines),
        completion_tokens=sum(line.completion_tokens for line in lines),
        # Rounded once per figure shown: a bucket is its records' exact sum.
        cost_micros=micros(exact),
        unpriced=unpriced,
    )


class BillingCore:
    def __init__(self, store: AuthStore, clock: Clock = _utcnow) -> None:
        self._store = store
        self._clock = clock

    async def set_price(self, new: NewPrice, *, backdate: bool = False) -> Price:
        """Appends `new` as its model's newest version (see billing.proto's
        SetPrice for what is refused and why)."""
        check_price(new)
        now = self._clock()
        price = Price(
            model=new.model.strip(),
            adapter=new.adapter.strip(),
            currency=new.currency,
            prompt=new.prompt,
            cached_prompt=new.cached_prompt,
            completion=new.completion,
            effective_from=new.effective_from or now,
            created_at=now,
        )
        book = await self._store.list_prices()
        if book and book[0].currency != price.currency:
            raise InvalidArgumentError(
                "price.currency", f"the price book is in {book[0].currency}: one currency"
            )
        versions = [p for p in book if p.name == price.name]
        if versions and price.effective_from <= versions[-1].effective_from:
            raise InvalidArgumentError(
                "price.effective_time",
                "must be after the latest version of this model's price: an earlier one"
                " would reprice what that version billed",
            )
        if price.effective_from < now and (versions or not backdate):
            raise InvalidArgumentError(
                "price.effective_time",
                "is in the past: it would reprice usage already billed (backdate is"
                " allowed only for a model with no price yet)",
            )
        if not await self._store.add_price(price):
            raise AlreadyExistsError(f"{price.name!r} has a price effective at that time")
        return price

    async def list_prices(self, model: str = "", include_history: bool = False) -> list[Price]:
        """The book by billed name then effective time: every version, or the
        one in force now per name (a version set for the future is history)."""
        book = [p for p in await self._store.list_prices() if not model or p.name == model]
        if include_history:
            return book
        now = self._clock()
        current: dict[str, Price] = {}
        for price in book:
            if price.effective_from <= now:
                current[price.name] = price
        return list(current.values())

    async def usage(
        self, tenant_id: str, start: datetime | None, end: datetime | None, by: Grouping | None
    ) -> CostedUsage:
        """The tenant's usage over [start, end) with its cost, split `by`."""
        if not tenant_id:
            raise InvalidArgumentError("tenant_id", "required")
        lines = await self._store.usage_lines(tenant_id, start, end, by)
        prices = await self._store.list_prices()
        book = in_force(prices)
        by_key: dict[str, list[UsageLine]] = {}
        for line in lines:
            by_key.setdefault(line.key, []).append(line)
        buckets = [_sum(key, group, book) for key, group in by_key.items()] if by else []
        unpriced = sorted(
            {line.model for line in lines if (line.model, line.priced_at) not in book}
        )
        return CostedUsage(
            tenant_id=tenant_id,
            currency=prices[0].currency if prices else "",
            total=_sum("", lines, book),
            buckets=sorted(buckets, key=lambda b: b.key),
            unpriced_models=unpriced,
        )

    async def statement(self, tenant_id: str, month: str) -> Statement:
        """A month's bill: per model, price version and token kind, each line
        rounded half up to a micro-unit, the total the sum of the lines."""
        if not tenant_id:
            raise InvalidArgumentError("tenant_id", "required")
        start, end = month_range(month)
        lines = await self._store.usage_lines(tenant_id, start, end, Grouping.MODEL)
        prices = await self._store.list_prices()
        book = in_force(prices)
        out: list[StatementLine] = []
        unpriced: set[str] = set()
        # Unpriced usage first within a model (no effective time), then by version.
        for line in sorted(lines, key=lambda u: (u.model, u.priced_at or _NO_VERSION)):
            price = book.get((line.model, line.priced_at)) if line.priced_at else None
            if price is None:
                unpriced.add(line.model)
            for kind in TokenKind:
                tokens = line.tokens(kind)
                if tokens == 0:
                    continue
                unit = price.per_million(kind) if price else 0
                out.append(
                    StatementLine(
                        line.model,
                        kind,
                        tokens,
                        unit,
                        amount(tokens, unit),
                        price.effective_from if price else None,
                    )
                )
        return Statement(
            tenant_id=tenant_id,
            month=month,
            currency=prices[0].currency if prices else "",
            lines=out,
            requests=sum(line.requests for line in lines),
            total_micros=sum(line.amount_micros for line in out),
            unpriced_models=sorted(unpriced),
        )

    async def export(self, tenant_id: str, month: str) -> AsyncIterator[UsageRecord]:
        """Every record of the tenant's month in (end_time, request_id) order."""
        if not tenant_id:
            raise InvalidArgumentError("tenant_id", "required")
        start, end = month_range(month)
        after: tuple[datetime, str] | None = None
        while True:
            page = await self._store.usage_records(tenant_id, start, end, after, EXPORT_PAGE)
            for record in page:
                yield record
            if len(page) < EXPORT_PAGE:
                return
            after = (page[-1].end_time, page[-1].request_id)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A budget with what the ledger says it has spent (micro-units)."""

    budget: Budget
    month_spent: int
    total_spent: int


class Budgets:
    """The operator sets money budgets; the operator and the tenant's admin
    read them. The quota state enforces them (budgets.py)."""

    def __init__(self, store: AuthStore, clock: Clock = _utcnow) -> None:
        self._store = store
        self._clock = clock

    async def set(self, budget: Budget) -> Budget:
        check_budget(budget)
        if await self._store.get_tenant(budget.tenant_id) is None:
            raise NotFoundError(f"no tenant {budget.tenant_id!r}")
        if budget.key_id:
            key = await self._store.get_key(budget.key_id)
            if key is None or key.tenant_id != budget.tenant_id:
                raise NotFoundError(f"no API key {budget.key_id!r} of tenant {budget.tenant_id!r}")
        stamped = replace(budget, updated_at=self._clock())
        await self._store.set_budget(stamped)
        return stamped

    async def list(self, tenant_id: str | None) -> list[BudgetStatus]:
        since = month_start(self._clock())
        found: list[BudgetStatus] = []
        budgets = await self._store.list_budgets(tenant_id)
        book = in_force(await self._store.list_prices()) if budgets else {}
        for budget in budgets:
            month = await ledger_cost(
                self._store, budget.tenant_id, budget.key_id, since, book=book
            )
            total = await ledger_cost(self._store, budget.tenant_id, budget.key_id, None, book=book)
            found.append(BudgetStatus(budget, micros(month), micros(total)))
        return found
