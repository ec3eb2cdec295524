"""The console in front of a real mesh on the simulated engine (no vLLM),
and one headless Debian chromium for the whole session, driven by
Playwright. Screenshots of each page go to tests/artifacts/console/."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from maas.v1 import auth_pb2, auth_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.anomaly.core import AnomalyCore
from services.anomaly.server import RunningAnomaly
from services.console.server import serving
from services.console.settings import ConsoleSettings
from services.mesh import MeshOptions, running_mesh

# What the replica's configuration says of its model (the library shows it).
MODEL_DESCRIPTION = "A tiny simulated model for the console's tests."

MODEL = "sim-tiny"
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "console"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class ConsoleMesh:
    url: str
    targets: dict[str, str]
    admin_token: str
    anomaly: AnomalyCore


@dataclass
class Tenant:
    tenant_id: str
    # A key with the admin scope: manages the tenant's keys in the console.
    admin_key: str
    # A key with the default scopes (generate, usage:read).
    key: str


def console_settings(targets: dict[str, str]) -> ConsoleSettings:
    return ConsoleSettings(
        port=0,
        grace_period_s=0.5,
        gateway_address=targets["gateway"],
        auth_address=targets["auth"],
        router_address=targets["router"],
        anomaly_address=targets["anomaly"],
    )


@asynccontextmanager
async def own_console(mesh: ConsoleMesh) -> AsyncIterator[str]:
    """Another console over the same mesh; yields its URL."""
    telemetry = setup("console", TelemetrySettings())
    try:
        async with serving(console_settings(mesh.targets), telemetry) as console:
            yield f"http://127.0.0.1:{console.port}"
    finally:
        telemetry.shutdown()


@asynccontextmanager
async def mesh_with_console(state: Path) -> AsyncIterator[ConsoleMesh]:
    """A mesh on the simulated engine and a console over it."""
    options = MeshOptions(
        state=state,
        model=MODEL,
        overrides={
            "inference": {
                "engine": "sim",
                "sim_profile": "tiny-cpu",
                "description": MODEL_DESCRIPTION,
            },
            # A revoked key stops working at the gateway within this.
            "gateway": {"auth_cache_ttl_s": 0.5},
        },
    )
    telemetry = setup("console", TelemetrySettings())
    try:
        async with running_mesh(options) as mesh:
            targets = mesh.targets
            anomaly = mesh.services["anomaly"]
            assert isinstance(anomaly, RunningAnomaly)
            async with serving(console_settings(targets), telemetry) as console:
                yield ConsoleMesh(
                    url=f"http://127.0.0.1:{console.port}",
                    targets=targets,
                    admin_token=options.admin_token,
                    anomaly=anomaly.core,
                )
    finally:
        telemetry.shutdown()


@pytest_asyncio.fixture(scope="session")
async def console_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConsoleMesh]:
    async with mesh_with_console(tmp_path_factory.mktemp("console-mesh")) as mesh:
        yield mesh


@pytest_asyncio.fixture(scope="module")
async def priced_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConsoleMesh]:
    """A mesh of its own for the price book's tests: the book is mesh-wide
    and append-only, so prices set there never reach the other tests'
    (unpriced) mesh, whatever order the tests run in."""
    async with mesh_with_console(tmp_path_factory.mktemp("priced-mesh")) as mesh:
        yield mesh


async def new_tenant(mesh: ConsoleMesh) -> Tenant:
    admin = (("authorization", f"Bearer {mesh.admin_token}"),)
    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
        stub = auth_pb2_grpc.AuthStub(ch)
        tenant = await stub.CreateTenant(
            auth_pb2.CreateTenantRequest(name=f"console-{secrets.token_hex(4)}"), metadata=admin
        )
        admin_key = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(
                tenant_id=tenant.tenant_id,
                name="console admin",
                scopes=["admin", "generate", "usage:read"],
            ),
            metadata=admin,
        )
        key = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="app"), metadata=admin
        )
    return Tenant(tenant.tenant_id, admin_key.api_key, key.api_key)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: Playwright's own browser download is out of reach."""
    found = shutil.which("chromium")
    if found is None:
        apt = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        subprocess.run(apt, check=True)
        found = shutil.which("chromium")
    assert found is not None, "chromium is not installed and apt could not install it"
    return found


@pytest_asyncio.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (no cookies) per test."""
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    yield ctx
    await ctx.close()


async def sign_in(page: Page, mesh: ConsoleMesh, credential: str) -> None:
    await page.goto(f"{mesh.url}/signin")
    await page.fill("#credential", credential)
    await page.click("#signin")
    await page.wait_for_load_state()


async def shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
