"""Money budgets in the console, in a real browser against a real mesh of
its own (the price book is mesh-wide): the operator sets a tenant's budget
on the operator page, the tenant's playground calls spend past its soft
threshold, the `budget_threshold` alert appears live on the tenant's alerts
page with a readable title, and the tenant's budgets page shows the spend
the ledger billed, to the micro-unit."""

from __future__ import annotations

import contextlib

from playwright.async_api import BrowserContext, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from services.auth.keys import parse_key
from tests.console.conftest import ConsoleMesh, new_tenant, shot, sign_in
from tests.console.test_prices import ODD_PRICE, run_in_playground, set_price
from tests.support import eventually

# A small monthly budget whose 1% soft threshold (100 micro-units) a call or
# two cross (ODD_PRICE: some 100-150 micro-units a call), far below the
# limit, so no call is refused on the way.
MONTHLY = "0.01"
SOFT = "1"
THRESHOLD_TEXT = "0.0001"
# Calls the test makes at most before the alert must have come.
MOST_CALLS = 10


async def submit_budget(page: Page, **fields: str) -> None:
    for name in ("tenant", "key", "monthly", "total", "soft"):
        await page.fill(f"#budget-{name}", fields.get(name, ""))
    await page.click("#save-budget")
    await page.wait_for_load_state()


async def field_error(page: Page) -> tuple[str | None, str]:
    error = page.locator("#budget-error")
    return await error.get_attribute("data-field"), await error.inner_text()


async def test_the_operator_form_names_the_field_it_refuses(
    priced_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    # Budgets are in the price book's currency.
    await set_price(priced_mesh, ODD_PRICE)
    tenant = await new_tenant(priced_mesh)
    page = await context.new_page()
    await sign_in(page, priced_mesh, priced_mesh.admin_token)
    await page.goto(f"{priced_mesh.url}/operator/budgets")
    good = {"tenant": tenant.tenant_id, "monthly": "25.50", "soft": "80"}

    # The console's own checks.
    await submit_budget(page, **{**good, "monthly": "0.0000001"})
    field, text = await field_error(page)
    assert field == "monthly" and text == "monthly: at most 6 decimal places (a micro-unit)"
    assert await page.locator("#budget-monthly").get_attribute("aria-invalid") == "true"
    await submit_budget(page, **{**good, "soft": "150"})
    assert (await field_error(page))[0] == "soft"
    # Auth's checks: its BadRequest field, and the key it does not know, as the form's fields.
    await submit_budget(page, **{**good, "total": "10000000"})
    field, text = await field_error(page)
    assert field == "total" and "at most" in text
    await submit_budget(page, **{**good, "key": "k_nosuchkey"})
    assert (await field_error(page))[0] == "key"
    # What was typed stays in the form.
    assert await page.locator("#budget-monthly").input_value() == "25.50"
    await shot(page, "operator-budgets-refused")

    # A key's own budget, beside the tenant's, listed with the tenant's.
    parsed = parse_key(tenant.key)
    assert parsed is not None
    await submit_budget(page, tenant=tenant.tenant_id, key=parsed.key_id, total="3")
    assert await page.locator("#budget-saved").is_visible()
    await submit_budget(page, **good)
    rows = page.locator("#budgets tr.budget")
    assert await rows.count() == 2
    mine = page.locator(f"#budget-{tenant.tenant_id}-tenant")
    assert await mine.locator(".monthly-limit").inner_text() == "25.50 USD"
    assert await mine.locator(".soft").inner_text() == "80%"
    theirs = page.locator(f"#budget-{tenant.tenant_id}-{parsed.key_id}")
    assert await theirs.locator(".total-limit").inner_text() == "3.00 USD"
    assert await theirs.locator(".monthly-limit").inner_text() == "none"


async def test_spend_past_the_soft_threshold_alerts_and_shows_on_the_budgets_page(
    priced_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    await set_price(priced_mesh, ODD_PRICE)
    tenant = await new_tenant(priced_mesh)

    operator = await context.new_page()
    await sign_in(operator, priced_mesh, priced_mesh.admin_token)
    await operator.goto(f"{priced_mesh.url}/operator/budgets")
    await submit_budget(operator, tenant=tenant.tenant_id, monthly=MONTHLY, soft=SOFT)
    assert await operator.locator("#budget-saved").is_visible()

    # The tenant, in a browser of its own, watches its alerts page live.
    assert context.browser is not None
    own = await context.browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        alerts = await own.new_page()
        await sign_in(alerts, priced_mesh, tenant.admin_key)
        await alerts.goto(f"{priced_mesh.url}/t/{tenant.tenant_id}/alerts")
        await alerts.wait_for_function("document.querySelectorAll('tr.alert').length === 0")
        await eventually(lambda: priced_mesh.anomaly.watchers >= 1)

        playground = await own.new_page()
        costs: list[int] = []
        budget_rows = alerts.locator("tr.alert-budget")
        while await budget_rows.count() == 0:
            assert len(costs) < MOST_CALLS, f"no budget alert after {len(costs)} calls"
            await run_in_playground(playground, priced_mesh, tenant.tenant_id, "spend a little")
            cost = await playground.locator("#call-cost").get_attribute("data-micros")
            costs.append(int(cost or ""))
            # The crossing reaches the anomaly service off the request path.
            # 2 s: long enough for that usually, and a miss costs only one more call.
            with contextlib.suppress(PlaywrightTimeout):
                await budget_rows.first.wait_for(timeout=2000)
        assert sum(costs) >= 100
        title = await budget_rows.first.locator(".alert-title").inner_text()
        assert title.startswith("Monthly budget of the tenant: spent ")
        assert title.endswith(f"past its soft threshold of {THRESHOLD_TEXT}")
        await shot(alerts, "alerts-budget")

        # The budgets page shows what the ledger billed: every call, exactly.
        budgets_url = f"{priced_mesh.url}/t/{tenant.tenant_id}/budgets"
        row = playground.locator(f"#budget-{tenant.tenant_id}-tenant")

        async def billed() -> bool:
            await playground.goto(budgets_url)
            return await row.locator(".month-spent").get_attribute("data-micros") == str(sum(costs))

        await eventually(billed)
        assert await row.locator(".monthly-limit").inner_text() == "0.01 USD"
        assert await row.locator(".soft").inner_text() == "1%"
        await shot(playground, "budgets")
    finally:
        await own.close()

    # The operator sees the same spend in the tenant's list.
    await operator.goto(f"{priced_mesh.url}/operator/budgets?tenant={tenant.tenant_id}")
    spent = operator.locator(f"#budget-{tenant.tenant_id}-tenant .month-spent")
    assert await spent.get_attribute("data-micros") == str(sum(costs))
    await shot(operator, "operator-budgets")


async def test_a_key_without_the_admin_scope_is_told_it_needs_one(
    priced_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    tenant = await new_tenant(priced_mesh)
    page = await context.new_page()
    await sign_in(page, priced_mesh, tenant.key)
    await page.goto(f"{priced_mesh.url}/t/{tenant.tenant_id}/budgets")
    assert (
        "needs a key with the admin scope" in await page.locator("#budgets-need-admin").inner_text()
    )
    assert await page.locator("#budgets").count() == 0


async def test_a_tenant_cannot_open_or_post_to_the_operator_budgets_page(
    priced_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    mine, theirs = await new_tenant(priced_mesh), await new_tenant(priced_mesh)
    page = await context.new_page()
    await sign_in(page, priced_mesh, mine.admin_key)
    for path in ("/operator/budgets", f"/t/{theirs.tenant_id}/budgets"):
        answer = await page.goto(f"{priced_mesh.url}{path}")
        assert answer is not None and answer.status == 403, path
    await page.goto(f"{priced_mesh.url}/t/{mine.tenant_id}/budgets")
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    posted = await page.request.post(
        f"{priced_mesh.url}/operator/budgets",
        form={"csrf": csrf or "", "tenant": mine.tenant_id, "monthly": "1000"},
    )
    assert posted.status == 403
    # Nothing was set.
    await page.reload()
    assert await page.locator("#budgets tr.budget").count() == 0
