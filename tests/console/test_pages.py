"""The console in a real browser against a real mesh: signing in, the
model library, the playground's stream, keys, the usage chart, alerts, and
the pages a tenant may not open."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from playwright.async_api import BrowserContext, Page

from maas.v1 import generation_pb2
from services.anomaly.events import RequestEvent
from services.auth.keys import parse_key
from tests.anomaly.support import feed, poisson_times, request
from tests.console.conftest import MODEL, ConsoleMesh, new_tenant, shot, sign_in
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
    # The price column waits for the price book: a marked "-", not a made-up number.
    assert await page.locator("#models td.price").inner_text() == "-"
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
