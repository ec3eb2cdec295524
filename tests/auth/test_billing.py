"""The price book and cost on usage, over both real stores (SQLite and
PostgreSQL), without gRPC."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.auth import billing
from services.auth.billing import BillingCore
from services.auth.core import MeteringCore
from services.auth.models import Grouping, RequestStatus, UsageRecord
from services.auth.pricing import NewPrice, TokenKind
from services.auth.store import AuthStore
from services.common.errors import InvalidArgumentError
from services.common.usage_terms import display

# The book's clock: before the month billed, so its versions are set ahead of time.
NOW = datetime(2026, 10, 1, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
NOV_15 = datetime(2026, 11, 15, tzinfo=UTC)


def price(
    model: str = "tiny",
    prompt: int = 100_000,
    completion: int = 400_000,
    at: datetime | None = NOV_1,
    **fields: object,
) -> NewPrice:
    base = NewPrice(model, "", "USD", prompt, prompt // 2, completion, at)
    return replace(base, **fields)  # type: ignore[arg-type]


def record(
    rid: str,
    at: datetime,
    model: str = "tiny",
    prompt: int = 0,
    completion: int = 0,
    cached: int = 0,
    tenant: str = "t1",
) -> UsageRecord:
    return UsageRecord(
        request_id=rid,
        tenant_id=tenant,
        key_id="k",
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        start_time=at - timedelta(seconds=1),
        end_time=at,
        status=RequestStatus.COMPLETED,
        cached_tokens=cached,
    )


@pytest.fixture
def book(store: AuthStore) -> BillingCore:
    return BillingCore(store, clock=lambda: NOW)


async def test_a_mid_month_price_change_bills_each_record_at_the_price_in_force(
    store: AuthStore, book: BillingCore
) -> None:
    await book.set_price(price(completion=400_000, at=NOV_1))
    await book.set_price(price(completion=1_000_000, at=NOV_15))
    ledger = MeteringCore(store)
    await ledger.record_usage(record("before", NOV_15 - timedelta(microseconds=1), completion=1000))
    await ledger.record_usage(record("at", NOV_15, completion=1000))
    await ledger.record_usage(record("after", NOV_15 + timedelta(days=3), completion=2000))

    statement = await book.statement("t1", "2026-11")
    assert [(line.tokens, line.unit_price, line.amount_micros) for line in statement.lines] == [
        (1000, 400_000, 400),
        (3000, 1_000_000, 3000),
    ]
    assert statement.total_micros == 3400
    by_day = await book.usage("t1", None, None, Grouping.DAY)
    assert [(b.key, b.cost_micros) for b in by_day.buckets] == [
        ("2026-11-14T00:00:00Z", 400),
        ("2026-11-15T00:00:00Z", 1000),
        ("2026-11-18T00:00:00Z", 2000),
    ]
    assert by_day.total.cost_micros == 3400
    # A later version never reprices the past: the first record still costs 400.
    await book.set_price(price(completion=9_000_000, at=datetime(2026, 12, 1, tzinfo=UTC)))
    again = await book.statement("t1", "2026-11")
    assert again.total_micros == 3400


async def test_costs_are_exact_where_a_float_sum_is_not(
    store: AuthStore, book: BillingCore
) -> None:
    # $0.10 per million prompt tokens; three requests of a million tokens each.
    await book.set_price(price(prompt=100_000, completion=0))
    ledger = MeteringCore(store)
    for i in range(3):
        await ledger.record_usage(record(f"r{i}", NOV_1 + timedelta(hours=i), prompt=1_000_000))
    assert 0.1 + 0.1 + 0.1 != 0.3  # what a float ledger would bill
    usage = await book.usage("t1", None, None, Grouping.HOUR)
    assert usage.total.cost_micros == 300_000
    assert str(display(usage.total.cost_micros)) == "0.300000"
    assert [b.cost_micros for b in usage.buckets] == [100_000] * 3


async def test_fractions_of_a_micro_unit_are_summed_before_rounding(
    store: AuthStore, book: BillingCore
) -> None:
    # $0.15 per million tokens: one token costs 0.15 micro-units.
    await book.set_price(price(prompt=150_000, completion=150_000))
    ledger = MeteringCore(store)
    for i in range(10):
        await ledger.record_usage(record(f"r{i}", NOV_1 + timedelta(minutes=i), completion=1))
    usage = await book.usage("t1", None, None, Grouping.MODEL)
    # 10 x 0.15 = 1.5 micro-units, rounded half up once: 2 (per record it would be 0).
    assert usage.total.cost_micros == 2
    assert usage.buckets[0].cost_micros == 2


async def test_cached_prompt_tokens_are_billed_at_their_own_price(
    store: AuthStore, book: BillingCore
) -> None:
    await book.set_price(price(prompt=1_000_000, completion=0, cached_prompt=250_000))
    await MeteringCore(store).record_usage(record("r", NOV_1, prompt=4000, cached=3000))
    statement = await book.statement("t1", "2026-11")
    assert [(line.kind, line.tokens, line.amount_micros) for line in statement.lines] == [
        (TokenKind.PROMPT, 1000, 1000),
        (TokenKind.CACHED_PROMPT, 3000, 750),
    ]


async def test_unpriced_models_cost_nothing_and_are_named(
    store: AuthStore, book: BillingCore
) -> None:
    await book.set_price(price("tiny"))
    ledger = MeteringCore(store)
    await ledger.record_usage(record("a", NOV_1, "tiny", completion=1_000_000))
    await ledger.record_usage(record("b", NOV_1, "mystery", completion=1_000_000))
    # Before its first version, a priced model is unpriced too.
    await ledger.record_usage(record("c", NOV_1 - timedelta(days=1), "tiny", completion=5))
    usage = await book.usage("t1", None, None, Grouping.MODEL)
    assert usage.unpriced_models == ["mystery", "tiny"]
    assert [(b.key, b.cost_micros, b.unpriced) for b in usage.buckets] == [
        ("mystery", 0, True),
        ("tiny", 400_000, True),
    ]
    november = await book.usage("t1", NOV_1, None, Grouping.MODEL)
    assert november.unpriced_models == ["mystery"]
    assert [b.unpriced for b in november.buckets] == [True, False]
    statement = await book.statement("t1", "2026-11")
    assert statement.unpriced_models == ["mystery"]
    assert [(line.model, line.unit_price) for line in statement.lines] == [
        ("mystery", 0),
        ("tiny", 400_000),
    ]


async def test_an_adapter_is_billed_at_its_own_price(store: AuthStore, book: BillingCore) -> None:
    await book.set_price(price("tiny", completion=1_000_000))
    await book.set_price(price("tiny", completion=3_000_000, adapter="tiny-sql"))
    ledger = MeteringCore(store)
    await ledger.record_usage(record("a", NOV_1, "tiny", completion=10))
    await ledger.record_usage(record("b", NOV_1, "tiny-sql", completion=10))
    usage = await book.usage("t1", None, None, Grouping.MODEL)
    assert [(b.key, b.cost_micros) for b in usage.buckets] == [("tiny", 10), ("tiny-sql", 30)]
    listed = await book.list_prices()
    assert [(p.model, p.adapter) for p in listed] == []  # none in force yet at NOW
    history = await book.list_prices(include_history=True)
    assert [(p.model, p.adapter, p.name) for p in history] == [
        ("tiny", "", "tiny"),
        ("tiny", "tiny-sql", "tiny-sql"),
    ]


async def test_the_book_lists_the_version_in_force(store: AuthStore) -> None:
    clock = [NOW]
    book = BillingCore(store, clock=lambda: clock[0])
    await book.set_price(price(completion=1, at=NOV_1))
    await book.set_price(price(completion=2, at=NOV_15))
    clock[0] = NOV_1 + timedelta(days=1)
    assert [p.completion for p in await book.list_prices("tiny")] == [1]
    clock[0] = NOV_15
    assert [p.completion for p in await book.list_prices("tiny")] == [2]
    assert [p.completion for p in await book.list_prices("tiny", include_history=True)] == [1, 2]
    assert await book.list_prices("other") == []


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (price(model=" "), "price.model"),
        (price(currency="usd"), "price.currency"),
        (price(currency="US"), "price.currency"),
        (price(prompt=-1), "price.prompt_micros_per_million"),
        (price(cached_prompt=-1), "price.cached_prompt_micros_per_million"),
        (price(completion=-5), "price.completion_micros_per_million"),
        (price(at=NOW - timedelta(seconds=1)), "price.effective_time"),
    ],
)
async def test_bad_prices_are_refused_naming_the_field(
    book: BillingCore, bad: NewPrice, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await book.set_price(bad)
    assert info.value.field == field


async def test_a_price_never_reprices_what_was_billed(book: BillingCore) -> None:
    await book.set_price(price(at=NOV_15))
    with pytest.raises(InvalidArgumentError) as earlier:
        await book.set_price(price(at=NOV_1))
    assert earlier.value.field == "price.effective_time"
    with pytest.raises(InvalidArgumentError) as same:
        await book.set_price(price(at=NOV_15))
    assert same.value.field == "price.effective_time"
    with pytest.raises(InvalidArgumentError) as backdated:
        await book.set_price(price(at=NOW - timedelta(days=1)), backdate=True)
    assert backdated.value.field == "price.effective_time"
    with pytest.raises(InvalidArgumentError) as currency:
        await book.set_price(price("other", currency="EUR"))
    assert currency.value.field == "price.currency"


async def test_an_unpriced_model_may_be_priced_from_the_past(book: BillingCore) -> None:
    past = NOW - timedelta(days=60)
    set_ = await book.set_price(price(at=past), backdate=True)
    assert set_.effective_from == past
    assert set_.created_at == NOW


async def test_an_unset_effective_time_is_now(book: BillingCore) -> None:
    assert (await book.set_price(price(at=None))).effective_from == NOW


async def test_export_pages_through_a_month_in_order(
    store: AuthStore, book: BillingCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(billing, "EXPORT_PAGE", 2)
    ledger = MeteringCore(store)
    same = NOV_15  # two records ending at one instant: ordered by request id
    for rid, at in (("e", NOV_1), ("c", same), ("b", same), ("a", NOV_1 + timedelta(days=20))):
        await ledger.record_usage(record(rid, at))
    await ledger.record_usage(record("october", NOV_1 - timedelta(seconds=1)))
    await ledger.record_usage(record("december", datetime(2026, 12, 1, tzinfo=UTC)))
    await ledger.record_usage(record("other", NOV_1, tenant="t2"))
    exported = [r.request_id async for r in book.export("t1", "2026-11")]
    assert exported == ["e", "b", "c", "a"]


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "nov", ""])
async def test_a_bad_month_is_refused(book: BillingCore, month: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await book.statement("t1", month)
    assert info.value.field == "month"


async def test_cached_tokens_beyond_the_prompt_are_refused(store: AuthStore) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await MeteringCore(store).record_usage(record("r", NOV_1, prompt=1, cached=2))
    assert info.value.field == "record.cached_tokens"
