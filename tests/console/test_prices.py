"""Money in the console, in a real browser against a real mesh of its own
(the price book is mesh-wide): the operator's price page, prices in the
model library, the exact cost of a playground call, and spend on the usage
page. Each test sets the version it needs (newer than any before), so they
hold in any order."""

from __future__ import annotations

from decimal import Decimal

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.async_api import BrowserContext, Page

from maas.v1 import billing_pb2, billing_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from tests.console.conftest import MODEL, ConsoleMesh, new_tenant, shot, sign_in
from tests.support import eventually

# Prices per million tokens chosen so that a call's cost needs rounding: a
# wrong token kind, a float or a rounding per kind gives another number.
ODD_PRICE = billing_pb2.Price(
    model=MODEL,
    currency="USD",
    prompt_micros_per_million=1_234_567,
    cached_prompt_micros_per_million=345_679,
    completion_micros_per_million=2_345_679,
)


async def set_price(mesh: ConsoleMesh, price: billing_pb2.Price) -> None:
    """A new version in force from now, through Billing itself."""
    admin = (("authorization", f"Bearer {mesh.admin_token}"),)
    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
        await billing_pb2_grpc.BillingStub(ch).SetPrice(
            billing_pb2.SetPriceRequest(price=price), metadata=admin
        )


def expected_micros(prompt: int, cached: int, completion: int, price: billing_pb2.Price) -> int:
    """The cost by hand: the exact sum in millionths of a micro-unit, rounded half up once."""
    exact = (
        (prompt - cached) * price.prompt_micros_per_million
        + cached * price.cached_prompt_micros_per_million
        + completion * price.completion_micros_per_million
    )
    return (exact + 500_000) // 1_000_000


async def run_in_playground(page: Page, mesh: ConsoleMesh, tenant_id: str, prompt: str) -> None:
    await page.goto(f"{mesh.url}/t/{tenant_id}/playground")
    await page.fill("#prompt", prompt)
    await page.fill("#max_tokens", "12")
    await page.click("#send")
    await page.wait_for_selector("#call-done")


async def test_the_operator_sets_a_price_and_the_model_library_shows_it(
    priced_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    page = await context.new_page()
    await sign_in(page, priced_mesh, priced_mesh.admin_token)
    await page.goto(f"{priced_mesh.url}/operator/prices")

    async def submit(**fields: str) -> None:
        for name in ("model", "adapter", "currency", "prompt", "cached_prompt", "completion"):
            await page.fill(f"#price-{name}", fields.get(name, ""))
        await page.click("#save-price")
        await page.wait_for_load_state()

    good = {
        "model": MODEL,
        "currency": "USD",
        "prompt": "0.15",
        "cached_prompt": "0.075",
        "completion": "0.60",
    }
    # The console's own check: finer than a micro-unit, named beside its field.
    await submit(**{**good, "prompt": "0.1234567"})
    error = page.locator("#price-error")
    assert await error.get_attribute("data-field") == "prompt"
    assert "prompt: at most 6 decimal places" in await error.inner_text()
    assert await page.locator("#price-prompt").get_attribute("aria-invalid") == "true"
    # Auth's check: its BadRequest field turned into the form's field.
    await submit(**{**good, "currency": "dollars"})
    assert await error.get_attribute("data-field") == "currency"
    assert "ISO 4217" in await error.inner_text()
    # What was typed stays in the form.
    assert await page.locator("#price-completion").input_value() == "0.60"
    await shot(page, "operator-prices-refused")

    await submit(**good)
    assert await page.locator("#price-saved").is_visible()
    current = await page.locator("#prices tbody tr").all_inner_texts()
    assert len(current) == 1 and "0.15 USD" in current[0] and "0.60 USD" in current[0]
    assert len(await page.locator("#price-history tbody tr").all()) >= 1
    await shot(page, "operator-prices")

    tenant = await new_tenant(priced_mesh)
    tenant_page = await context.browser.new_context() if context.browser else None
    assert tenant_page is not None
    library = await tenant_page.new_page()
    await sign_in(library, priced_mesh, tenant.key)
    row = library.locator(f"#model-{MODEL}")
    assert await row.locator(".price-prompt").inner_text() == "0.15 USD"
    assert await row.locator(".price-cached").inner_text() == "0.075 USD"
    assert await row.locator(".price-completion").inner_text() == "0.60 USD"
    await shot(library, "models-priced")
    await tenant_page.close()


async def test_a_playground_call_costs_exactly_its_tokens(
    priced_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    await set_price(priced_mesh, ODD_PRICE)
    tenant = await new_tenant(priced_mesh)
    page = await context.new_page()
    await sign_in(page, priced_mesh, tenant.key)
    await run_in_playground(page, priced_mesh, tenant.tenant_id, "price the tide")

    prompt = int(await page.locator("#call-prompt-tokens").inner_text())
    cached = int(await page.locator("#call-cached-tokens").inner_text())
    completion = int(await page.locator("#call-completion-tokens").inner_text())
    want = expected_micros(prompt, cached, completion, ODD_PRICE)
    cost = page.locator("#call-cost")
    assert want > 0 and await cost.get_attribute("data-micros") == str(want)
    text = await cost.inner_text()
    assert text.endswith(" USD") and Decimal(text.removesuffix(" USD")) == Decimal(want) / 10**6
    await shot(page, "playground-cost")

    # The ledger bills the call the same: its usage costs what the page said.
    key = (("authorization", f"Bearer {tenant.key}"),)
    start = Timestamp(seconds=0)

    async def billed() -> bool:
        async with grpc.aio.insecure_channel(priced_mesh.targets["gateway"]) as ch:
            usage = await gateway_pb2_grpc.GatewayStub(ch).GetUsage(
                gateway_pb2.GetUsageRequest(start_time=start), metadata=key
            )
        return usage.summary.requests == 1 and usage.summary.cost_micros == want

    await eventually(billed)


async def spend_series(page: Page) -> list[Decimal]:
    data: list[str] = await page.evaluate("Chart.getChart('spend-chart').data.datasets[0].data")
    return [Decimal(value) for value in data]


async def test_the_usage_page_charts_spend_that_changes_after_a_request(
    priced_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    await set_price(priced_mesh, ODD_PRICE)
    tenant = await new_tenant(priced_mesh)
    page = await context.new_page()
    await sign_in(page, priced_mesh, tenant.key)
    usage_url = f"{priced_mesh.url}/t/{tenant.tenant_id}/usage"
    await page.goto(usage_url)
    before = await spend_series(page)
    assert len(before) == 24 and sum(before) == 0

    await run_in_playground(page, priced_mesh, tenant.tenant_id, "count the shells")
    call_micros = int(await page.locator("#call-cost").get_attribute("data-micros") or "")

    async def charted() -> bool:
        await page.goto(usage_url)
        return sum(await spend_series(page)) == Decimal(call_micros) / 10**6

    # The record reaches the ledger off the request path (the gateway's outbox).
    await eventually(charted)
    # All of it in the one hour the call ended in.
    assert [v for v in await spend_series(page) if v] == [Decimal(call_micros) / 10**6]
    total = await page.locator("#total-cost").inner_text()
    assert Decimal(total.removesuffix(" USD")) == Decimal(call_micros) / 10**6
    assert await page.locator("#unpriced-models").count() == 0
    assert await page.evaluate("Chart.getChart('spend-chart').data.datasets[0].label") == (
        "spend (USD)"
    )
    await shot(page, "usage-spend")
