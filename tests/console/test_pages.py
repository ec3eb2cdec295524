"""The console in a real browser against a real mesh: signing in, the
model library, the playground's stream, keys, the usage chart, alerts, and
the pages a tenant may not open."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from playwright.async_api import APIResponse, BrowserContext, Page

from gateway.refusals import DEFAULT_AUTH_FAILURE_BURST
from services.anomaly.events import RequestEvent
from services.auth.keys import parse_key
from tests.anomaly.support import feed, poisson_times, request
from tests.console.conftest import (
    MODEL,
    MODEL_DESCRIPTION,
    ConsoleMesh,
    new_tenant,
    own_console,
    shot,
    sign_in,
)
from tests.support import eventually


async def test_a_tenant_signs_in_and_sees_the_model_library(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    tenant = await new_tenant(console_mesh)
    page = await context.new_page()
    await page.goto(f"{console_mesh.url}/")
    assert page.url == f"{console_mesh.url}/signin"
    await shot(page, "signin")

    await sign_in(page, console_mesh, tenant.key)
    assert page.url == f"{console_mesh.url}/t/{tenant.tenant_id}/models"
    rows = await page.locator("#models tbody tr").all_inner_texts()
    assert len(rows) == 1 and MODEL in rows[0] and "tokens" in rows[0]
    assert await page.locator("#models td.description").all_inner_texts() == [MODEL_DESCRIPTION]
    # This mesh's price book is empty: the price says so, never a made-up "0".
    assert await page.locator("#models td.price").all_inner_texts() == ["not priced"]
    # The key never reaches the page or a script-readable cookie.
    assert tenant.key not in await page.content()
    assert await page.evaluate("document.cookie") == ""
    cookies = await context.cookies()
    assert [(c["httpOnly"], c["sameSite"]) for c in cookies] == [(True, "Strict")]
    await shot(page, "models")

    await page.click("#signout")
    assert page.url == f"{console_mesh.url}/signin"
    await page.goto(f"{console_mesh.url}/t/{tenant.tenant_id}/models")
    assert page.url == f"{console_mesh.url}/signin"


async def test_a_wrong_credential_is_refused(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    page = await context.new_page()
    await sign_in(page, console_mesh, "maas_not-a-key")
    assert page.url == f"{console_mesh.url}/signin"
    assert "not a valid API key" in await page.locator(".error").inner_text()
    assert await context.cookies() == []


async def test_guessing_at_credentials_is_cut_off(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    # A console of its own: the budget is per address, and every test signs in from 127.0.0.1.
    async with own_console(console_mesh) as url:
        page = await context.new_page()
        answers: list[APIResponse] = []
        # Past the burst, refused ones refill at DEFAULT_AUTH_FAILURES_PER_S:
        # a guesser faster than that runs dry; ten bursts' worth bounds the loop.
        while len(answers) < 10 * DEFAULT_AUTH_FAILURE_BURST:
            form: dict[str, str | float | bool] = {"credential": f"guess-{len(answers)}"}
            answers.append(await page.request.post(f"{url}/signin", form=form))
            if answers[-1].status == 429:
                break
        cut_off = answers.pop()
        assert cut_off.status == 429 and int(cut_off.headers["retry-after"]) >= 1
        assert {a.status for a in answers} == {401} and len(answers) >= DEFAULT_AUTH_FAILURE_BURST


async def test_the_playground_streams_the_answer_as_it_is_generated(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    tenant = await new_tenant(console_mesh)
    page = await context.new_page()
    await sign_in(page, console_mesh, tenant.key)
    await page.goto(f"{console_mesh.url}/t/{tenant.tenant_id}/playground")
    # Every SSE message the page takes in, in order, with the answer's length then.
    await page.evaluate(
        """window.seen = [];
        document.body.addEventListener('htmx:sseMessage', (e) => window.seen.push(
            [e.detail.type, document.getElementById('answer').textContent.length]));"""
    )
    await page.select_option("#model", MODEL)
    await page.fill("#system", "You answer briefly.")
    await page.fill("#prompt", "Tell me about the <b>sea</b>")
    await page.fill("#temperature", "0.5")
    await page.fill("#max_tokens", "24")
    await page.fill("#seed", "7")
    await page.click("#send")
    await page.wait_for_selector("#call-done")

    seen: list[list[object]] = await page.evaluate("window.seen")
    kinds = [kind for kind, _ in seen]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"}
    # Streamed: the answer grew message by message before the call ended.
    lengths = [int(str(length)) for _, length in seen[:-1]]
    assert len(lengths) > 1 and lengths == sorted(lengths) and lengths[0] > 0
    answer = await page.locator("#answer").inner_text()
    assert answer and "<b>" not in await page.locator("#answer").inner_html()
    completion = int(await page.locator("#call-completion-tokens").inner_text())
    assert 0 < completion <= 24
    assert int(await page.locator("#call-prompt-tokens").inner_text()) > 0
    assert await page.locator("#call-finish").inner_text() in {"stop", "length"}
    await shot(page, "playground")


async def test_the_playground_names_a_bad_field(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    tenant = await new_tenant(console_mesh)
    page = await context.new_page()
    await sign_in(page, console_mesh, tenant.key)
    await page.goto(f"{console_mesh.url}/t/{tenant.tenant_id}/playground")
    await page.fill("#prompt", "hi")
    # Past the browser's own check of the field, as a hand-made request would be.
    await page.evaluate("document.getElementById('playground').noValidate = true")
    await page.fill("#temperature", "5")
    await page.click("#send")
    error = await page.wait_for_selector("#run-error")
    assert error is not None and "temperature" in await error.inner_text()


async def test_a_tenant_admin_creates_a_key_shown_once_and_revokes_it(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    tenant = await new_tenant(console_mesh)
    page = await context.new_page()
    await sign_in(page, console_mesh, tenant.admin_key)
    keys_url = f"{console_mesh.url}/t/{tenant.tenant_id}/keys"
    await page.goto(keys_url)
    expires = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    await page.fill("#key-name", "deploy bot")
    await page.fill("#key-expires", expires)
    await page.click("#create")
    secret = await page.locator("#new-key-secret").inner_text()
    parsed = parse_key(secret)
    assert parsed is not None
    row = page.locator(f"#key-{parsed.key_id}")
    assert "deploy bot" in await row.inner_text() and expires in await row.inner_text()
    await shot(page, "keys-created")

    # Shown once: the list alone never shows a secret again.
    await page.goto(keys_url)
    assert secret not in await page.content()
    assert await row.locator(".state").inner_text() == "active"
    # The new key works: it signs in.
    other = await context.browser.new_context() if context.browser else None
    assert other is not None
    second = await other.new_page()
    await sign_in(second, console_mesh, secret)
    assert second.url.endswith(f"/t/{tenant.tenant_id}/models")

    await row.locator("button.revoke").click()
    await page.wait_for_load_state()
    assert (await row.locator(".state").inner_text()).startswith("revoked")
    await shot(page, "keys-revoked")
    # Revoked: the session it opened ends (its credential is asked about
    # again every few seconds), and it signs in no more.

    async def signed_out() -> bool:
        await second.goto(f"{console_mesh.url}/t/{tenant.tenant_id}/alerts")
        return second.url == f"{console_mesh.url}/signin"

    await eventually(signed_out)
    await sign_in(second, console_mesh, secret)
    assert second.url == f"{console_mesh.url}/signin"
    await other.close()


async def test_a_key_without_the_admin_scope_manages_no_keys(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    tenant = await new_tenant(console_mesh)
    page = await context.new_page()
    await sign_in(page, console_mesh, tenant.key)
    await page.goto(f"{console_mesh.url}/t/{tenant.tenant_id}/keys")
    assert await page.locator("#keys-need-admin").is_visible()
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    answer = await page.request.post(
        f"{console_mesh.url}/t/{tenant.tenant_id}/keys", form={"name": "x", "csrf": csrf or ""}
    )
    assert answer.status == 403


async def test_posts_without_the_form_token_or_from_another_site_are_refused(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    tenant = await new_tenant(console_mesh)
    page = await context.new_page()
    await sign_in(page, console_mesh, tenant.admin_key)
    await page.goto(f"{console_mesh.url}/t/{tenant.tenant_id}/keys")
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    url = f"{console_mesh.url}/t/{tenant.tenant_id}/keys"
    no_token = await page.request.post(url, form={"name": "forged"})
    assert no_token.status == 403
    elsewhere = await page.request.post(
        url, form={"name": "forged", "csrf": csrf or ""}, headers={"origin": "http://evil.test"}
    )
    assert elsewhere.status == 403
    await page.goto(url)
    assert "forged" not in await page.locator("#keys").inner_text()


async def chart_tokens(page: Page) -> int:
    total: int = await page.evaluate(
        """Chart.getChart('usage-chart').data.datasets
            .flatMap((d) => d.data).reduce((a, b) => a + b, 0)"""
    )
    return total


async def test_the_usage_chart_shows_a_new_request(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    tenant = await new_tenant(console_mesh)
    page = await context.new_page()
    await sign_in(page, console_mesh, tenant.key)
    usage_url = f"{console_mesh.url}/t/{tenant.tenant_id}/usage"
    await page.goto(usage_url)
    assert await chart_tokens(page) == 0
    assert await page.locator("#total-cost").inner_text() == "0.00"
    assert await page.locator("#unpriced-models").count() == 0

    await page.goto(f"{console_mesh.url}/t/{tenant.tenant_id}/playground")
    await page.fill("#prompt", "count the waves")
    await page.fill("#max_tokens", "8")
    await page.click("#send")
    await page.wait_for_selector("#call-done")
    used = int(await page.locator("#call-prompt-tokens").inner_text()) + int(
        await page.locator("#call-completion-tokens").inner_text()
    )

    async def charted() -> bool:
        await page.goto(usage_url)
        return await chart_tokens(page) == used

    # The usage record reaches the ledger off the request path (the gateway's outbox).
    await eventually(charted)
    assert await page.locator("#total-requests").inner_text() == "1"
    # Unpriced usage costs 0 and is named, never silently free.
    assert await page.locator("#total-cost").inner_text() == "0.00"
    assert MODEL in await page.locator("#unpriced-models").inner_text()
    await shot(page, "usage")
    await page.goto(f"{usage_url}?by=day")
    assert await chart_tokens(page) == used


def rate_spike(tenant_id: str, key_id: str, start: datetime) -> list[RequestEvent]:
    """Twenty minutes of a steady two requests a second, then thirty seconds
    of twenty-five a second, from `start`: the anomaly service's request
    rate spike (as tests/e2e/test_anomaly_policy.py raises it)."""
    rng = random.Random(11)
    warmup_s = 20 * 60
    start_s = start.timestamp()
    steady = [
        request(at, tenant=tenant_id, key=key_id)
        for at in poisson_times(rng, start_s, warmup_s + 30, 2.0)
    ]
    spike = [
        request(at, tenant=tenant_id, key=key_id)
        for at in poisson_times(rng, start_s + warmup_s, 30, 25.0)
    ]
    return [*steady, *spike]


async def test_an_alert_appears_while_the_page_is_open(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    tenant = await new_tenant(console_mesh)
    parsed = parse_key(tenant.key)
    assert parsed is not None
    page = await context.new_page()
    await sign_in(page, console_mesh, tenant.key)
    await page.goto(f"{console_mesh.url}/t/{tenant.tenant_id}/alerts")
    # Connected to the live stream before anything is raised.
    await page.wait_for_function("document.querySelectorAll('tr.alert').length === 0")
    await eventually(lambda: console_mesh.anomaly.watchers >= 1)

    # Event time runs from now on: the detectors take no event older than
    # what the mesh's real requests (earlier tests) already reported.
    feed(console_mesh.anomaly, rate_spike(tenant.tenant_id, parsed.key_id, datetime.now(UTC)))
    await page.wait_for_selector("tr.alert")
    rows = await page.locator("tr.alert").all_inner_texts()
    assert any("request_rate_spike" in row for row in rows)
    assert all(tenant.tenant_id in row or parsed.key_id in row for row in rows)
    # Every alert the service holds is on the page once, at its latest count
    # (its updates replaced its row instead of adding rows).
    want = {
        a.alert_id: a.count
        for a in console_mesh.anomaly.alerts()
        if a.tenant_id == tenant.tenant_id
    }

    async def shown() -> dict[str, int]:
        pairs: list[list[str]] = await page.evaluate(
            """[...document.querySelectorAll('tr.alert')].map(
                (r) => [r.dataset.alertId, r.querySelector('.count').textContent])"""
        )
        assert len({alert_id for alert_id, _ in pairs}) == len(pairs), "an alert shown twice"
        return {alert_id: int(count) for alert_id, count in pairs}

    async def all_shown_once() -> bool:
        return await shown() == want

    await eventually(all_shown_once)
    await shot(page, "alerts")


async def test_a_tenant_cannot_open_another_tenants_or_the_operator_pages(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    mine, theirs = await new_tenant(console_mesh), await new_tenant(console_mesh)
    page = await context.new_page()
    await sign_in(page, console_mesh, mine.admin_key)
    theirs_pages = [
        f"/t/{theirs.tenant_id}/{path}"
        for path in ("models", "playground", "keys", "usage", "budgets", "alerts", "alerts/stream")
    ]
    operator_pages = [
        f"/operator/{path}"
        for path in (
            "tenants",
            "prices",
            "budgets",
            "replicas",
            "queues",
            "alerts",
            "alerts/stream",
        )
    ]
    for path in [*theirs_pages, *operator_pages]:
        answer = await page.goto(f"{console_mesh.url}{path}")
        assert answer is not None and answer.status == 403, path
    await shot(page, "refused")
    revoke = await page.request.post(
        f"{console_mesh.url}/t/{theirs.tenant_id}/keys/anything/revoke", form={"csrf": "x"}
    )
    assert revoke.status == 403
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    price = await page.request.post(
        f"{console_mesh.url}/operator/prices",
        form={"csrf": csrf or "", "model": MODEL, "currency": "USD", "prompt": "0"},
    )
    assert price.status == 403


async def test_the_operator_sees_tenants_replicas_queues_and_alerts(
    console_mesh: ConsoleMesh, context: BrowserContext
) -> None:
    tenant = await new_tenant(console_mesh)
    page = await context.new_page()
    await sign_in(page, console_mesh, console_mesh.admin_token)
    assert page.url == f"{console_mesh.url}/operator/tenants"
    assert tenant.tenant_id in await page.locator("#tenants").inner_text()
    await shot(page, "operator-tenants")
    await page.goto(f"{console_mesh.url}/operator/replicas")
    assert await page.locator("#replicas td.state").all_inner_texts() == ["serving"]
    await shot(page, "operator-replicas")
    await page.goto(f"{console_mesh.url}/operator/queues")
    assert await page.locator("#queue-waiting").is_visible()
    await shot(page, "operator-queues")
    await page.goto(f"{console_mesh.url}/operator/alerts")
    await shot(page, "operator-alerts")
    # The operator token has no tenant: a tenant's pages are not its.
    answer = await page.goto(f"{console_mesh.url}/t/{tenant.tenant_id}/models")
    assert answer is not None and answer.status == 403
