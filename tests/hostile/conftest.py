"""Hostile tenants against a real mesh (real engine, real auth, the HTTP face).

Every case runs a well-behaved second tenant beside the attack (`bystander`)
and checks that it completed every request and was billed exactly what it
was streamed: an attack that hurts anyone but the attacker is a failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from maas.v1 import generation_pb2
from maas_cli.client import MaasClient
from tests.mesh import Mesh, TenantFactory, TenantKey, set_plan
from tests.support import eventually

__all__ = ["Mesh", "TenantFactory", "TenantKey", "set_plan"]


@dataclass
class Bystander:
    """What the well-behaved tenant saw."""

    tenant: TenantKey
    completed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)


@asynccontextmanager
async def bystander(
    mesh: Mesh,
    tenant: TenantKey,
    *,
    requests: int = 4,
    max_tokens: int = 16,
    gateway: str | None = None,
) -> AsyncIterator[Bystander]:
    """Runs `requests` ordinary generations one after another while the body
    runs (and until they are done), through `gateway` (default: the mesh's);
    then asserts that every one finished and that the ledger bills exactly
    the tokens streamed."""
    seen = Bystander(tenant)

    async def run() -> None:
        async with MaasClient(gateway or mesh.gateway, tenant.api_key) as client:
            for i in range(requests):
                try:
                    last: generation_pb2.GenerateResponse | None = None
                    async for chunk in client.generate(
                        mesh.model, prompt=f"A calm day {i}.", max_tokens=max_tokens, seed=i
                    ):
                        last = chunk
                    assert last is not None and last.HasField("usage")
                    seen.completed += 1
                    seen.prompt_tokens += last.usage.prompt_tokens
                    seen.completion_tokens += last.usage.completion_tokens
                except Exception as err:  # recorded, asserted below
                    seen.errors.append(repr(err))

    task = asyncio.create_task(run())
    try:
        yield seen
    finally:
        await task
    assert seen.errors == [], f"the bystander tenant was hurt: {seen.errors}"
    assert seen.completed == requests

    async with MaasClient(mesh.gateway, tenant.api_key) as client:

        async def billed() -> bool:
            return (await client.usage()).requests == requests

        await eventually(billed)
        summary = await client.usage()
    assert summary.prompt_tokens == seen.prompt_tokens
    assert summary.completion_tokens == seen.completion_tokens
