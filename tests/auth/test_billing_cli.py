"""`maas admin price`, `maas statement` and `maas usage`'s cost against a real
auth server (its store SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from typer.testing import CliRunner, Result

from maas.v1 import auth_pb2, auth_pb2_grpc
from maas_cli.cli import app
from observability import setup
from observability.settings import TelemetrySettings
from services.auth.server import serving
from services.auth.settings import AuthSettings
from services.auth.store import AuthStore
from tests.auth.conftest import ADMIN_TOKEN, PEPPER
from tests.auth.test_billing_service import EXPECTED, seed_month


@pytest_asyncio.fixture
async def auth_target(store: AuthStore, tmp_path: Path) -> AsyncIterator[str]:
    settings = AuthSettings(
        port=0, admin_token=ADMIN_TOKEN, key_pepper=PEPPER.decode(), database_path=tmp_path / "a.db"
    )
    telemetry = setup("auth", TelemetrySettings())
    async with serving(settings, telemetry, store=store) as server:
        yield f"127.0.0.1:{server.port}"
    telemetry.shutdown()


async def maas(target: str, *args: str, token: str = ADMIN_TOKEN) -> Result:
    """Runs the CLI in a thread: it runs its own event loop."""
    # rich wraps tables to the terminal width; 250 holds every column.
    env = {"MAAS_AUTH": target, "MAAS_ADMIN_TOKEN": token, "COLUMNS": "250"}
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def test_price_set_and_list_keep_the_price_exact(auth_target: str) -> None:
    set_ = await maas(
        auth_target, "admin", "price", "set", "tiny", "--prompt", "0.15",
        "--completion", "0.600001", "--effective", "2099-01-01T00:00:00", "--json",
    )  # fmt: skip
    assert set_.exit_code == 0, set_.output
    [price] = json.loads(set_.output)
    assert (price["prompt_micros_per_million"], price["completion_micros_per_million"]) == (
        150_000,
        600_001,
    )
    assert price["cached_prompt_micros_per_million"] == 150_000  # defaults to --prompt
    assert price["effective_time"] == "2099-01-01T00:00:00Z"
    listed = await maas(auth_target, "admin", "price", "list", "--history", "--json")
    assert listed.exit_code == 0, listed.output
    assert [p["completion_per_million"] for p in json.loads(listed.output)] == ["0.600001"]
    # Not in force before 2099: the book in force now is empty.
    now = await maas(auth_target, "admin", "price", "list", "--json")
    assert json.loads(now.output) == []


async def test_price_set_refuses_what_it_cannot_bill_exactly(auth_target: str) -> None:
    too_fine = await maas(
        auth_target, "admin", "price", "set", "tiny", "--prompt", "0.0000001", "--completion", "1"
    )
    assert too_fine.exit_code == 2  # bad command-line use
    assert "6 decimal places" in too_fine.output
    negative = await maas(
        auth_target, "admin", "price", "set", "tiny", "--prompt", "-1", "--completion", "1"
    )
    assert negative.exit_code == 3  # INVALID_ARGUMENT
    assert "INVALID_ARGUMENT" in negative.output


async def test_price_set_is_the_operators_alone(auth_target: str) -> None:
    async with grpc.aio.insecure_channel(auth_target) as channel:
        auth = auth_pb2_grpc.AuthStub(channel)
        admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        tenant = await auth.CreateTenant(auth_pb2.CreateTenantRequest(name="acme"), metadata=admin)
        key = await auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, scopes=["admin"]),
            metadata=admin,
        )
    refused = await maas(
        auth_target, "admin", "price", "set", "tiny", "--prompt", "1", "--completion", "1",
        token=key.api_key,
    )  # fmt: skip
    assert refused.exit_code == 7  # PERMISSION_DENIED
    assert "PERMISSION_DENIED" in refused.output


async def test_statement_prints_the_hand_computed_files(store: AuthStore, auth_target: str) -> None:
    await seed_month(store)
    for fmt, name in (
        ("csv", "statement_2026-11.csv"),
        ("json", "statement_2026-11.json"),
        ("cloudevents", "cloudevents_2026-11.jsonl"),
    ):
        result = await maas(
            auth_target, "statement", "--tenant", "t-seeded", "--month", "2026-11", "--format", fmt
        )
        assert result.exit_code == 0, result.output
        assert result.output == (EXPECTED / name).read_text()
    table = await maas(auth_target, "statement", "--tenant", "t-seeded", "--month", "2026-11")
    assert "0.002928" in table.output
    assert "unpriced (billed 0): big" in table.output
    bad = await maas(auth_target, "statement", "--tenant", "t-seeded", "--month", "11-2026")
    assert bad.exit_code == 3  # INVALID_ARGUMENT
    assert "INVALID_ARGUMENT" in bad.output


async def test_usage_shows_cost_beside_tokens(store: AuthStore, auth_target: str) -> None:
    await seed_month(store)
    result = await maas(
        auth_target, "usage", "--tenant", "t-seeded", "--since", "2026-11-01",
        "--by", "model", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["key"], r["cost"], r["cost_micros"], r["unpriced"]) for r in rows] == [
        ("big", "0.000000", 0, True),
        ("tiny", "0.001905", 1905, False),
        ("tiny-sql", "0.001033", 1033, False),
    ]
    assert {r["currency"] for r in rows} == {"USD"}
