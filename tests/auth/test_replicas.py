"""Auth replicas with one truth: 2 and 4 real auth processes on one
PostgreSQL database and one Redis, concurrent load spread round robin over
them; each of a plan's limits admits exactly its number, never more."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from maas.v1 import auth_pb2, auth_pb2_grpc
from tests.auth.conftest import ADMIN_TOKEN
from tests.auth.replicas import auth_replicas, postgres_database

ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
# More callers than any limit admits, so every limit is reached under contention.
CALLERS = 40


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def replicas(postgres_dsn: str, redis_url: str) -> AsyncIterator[list[grpc.aio.Channel]]:
    """Four replicas; a test on 2 uses the first two."""
    async with (
        postgres_database(postgres_dsn) as database_url,
        auth_replicas(4, database_url, redis_url) as channels,
    ):
        yield channels


class Spread:
    """Calls spread round robin over the replicas' stubs."""

    def __init__(self, channels: list[grpc.aio.Channel]) -> None:
        self.stubs: list[auth_pb2_grpc.AuthAsyncStub] = [
            auth_pb2_grpc.AuthStub(c) for c in channels
        ]
        self.tenant_id = ""

    def stub(self, i: int) -> auth_pb2_grpc.AuthAsyncStub:
        return self.stubs[i % len(self.stubs)]

    async def tenant(self, plan: auth_pb2.Plan) -> str:
        made = await self.stubs[0].CreateTenant(
            auth_pb2.CreateTenantRequest(name=f"t-{uuid.uuid4().hex}", plan=plan), metadata=ADMIN
        )
        self.tenant_id = made.tenant_id
        return made.tenant_id

    async def reserve(self, i: int, tokens: int, key_id: str = "") -> auth_pb2.Reservation | str:
        """The reservation, or the subject of the limit that refused it."""
        request = auth_pb2.ReserveRequest(
            tenant_id=self.tenant_id,
            request_id=f"r-{uuid.uuid4().hex}",
            model="tiny",
            estimated_tokens=tokens,
        )
        if key_id:
            request.key_id = key_id
        try:
            reservation: auth_pb2.Reservation = await self.stub(i).Reserve(request)
            return reservation
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return quota_subject(err)
            raise

    async def wave(self, tokens: int) -> list[auth_pb2.Reservation | str]:
        return list(await asyncio.gather(*(self.reserve(i, tokens) for i in range(CALLERS))))


def quota_subject(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            return str(failure.violations[0].subject)
    raise AssertionError("no QuotaFailure detail")


def admitted(outcomes: list[auth_pb2.Reservation | str]) -> list[auth_pb2.Reservation]:
    return [o for o in outcomes if isinstance(o, auth_pb2.Reservation)]


@pytest.mark.parametrize("count", [2, 4])
async def test_each_limit_admits_exactly_its_number_across_replicas(
    replicas: list[grpc.aio.Channel], count: int
) -> None:
    spread = Spread(replicas[:count])

    # Requests per minute: the bucket refills 10/60 of a request a second, so
    # no second request comes back within 6 s, and the wave ends well before.
    await spread.tenant(auth_pb2.Plan(requests_per_minute=10))
    wave = await spread.wave(tokens=1)
    assert len(admitted(wave)) == 10
    assert len(wave) - 10 == sum(1 for o in wave if not isinstance(o, auth_pb2.Reservation))

    # Tokens per minute: 100-token requests on 1,000 a minute: 10, and a refill
    # of 100 tokens takes 6 s. Committed in full, so nothing comes back.
    await spread.tenant(auth_pb2.Plan(tokens_per_minute=1000))
    wave = await spread.wave(tokens=100)
    assert len(admitted(wave)) == 10
    for i, held in enumerate(admitted(wave)):
        await spread.stub(i).Commit(
            auth_pb2.CommitRequest(reservation_id=held.reservation_id, used_tokens=100)
        )
    assert admitted(await spread.wave(tokens=100)) == []

    # Concurrency: held leases, no time in it at all. Released (on other
    # replicas than took them), the slots come back, exactly as many again.
    await spread.tenant(auth_pb2.Plan(max_concurrent_requests=5))
    for _ in range(2):
        running = admitted(await spread.wave(tokens=1))
        assert len(running) == 5
        for i, h in enumerate(running):
            await spread.stub(i + 1).Release(
                auth_pb2.ReleaseRequest(reservation_id=h.reservation_id)
            )

    # Monthly budget: reserve and commit 100 tokens each, from every caller at
    # once, on 1,000: ten commits and not one more, though no usage record
    # reaches the ledger (the committed tokens are counted in Redis).
    await spread.tenant(auth_pb2.Plan(monthly_token_budget=1000))

    async def reserve_and_commit(i: int) -> bool:
        outcome = await spread.reserve(i, 100)
        if not isinstance(outcome, auth_pb2.Reservation):
            return False
        await spread.stub(i + 1).Commit(
            auth_pb2.CommitRequest(reservation_id=outcome.reservation_id, used_tokens=100)
        )
        return True

    committed = await asyncio.gather(*(reserve_and_commit(i) for i in range(CALLERS)))
    assert sum(committed) == 10
    assert await spread.reserve(0, 1) == "monthly_token_budget"


async def test_a_restriction_made_on_one_replica_refuses_the_next_reserve_on_another(
    replicas: list[grpc.aio.Channel],
) -> None:
    a, b = Spread(replicas[:1]), Spread(replicas[1:2])
    tenant_id = await a.tenant(auth_pb2.Plan())
    b.tenant_id = tenant_id
    key = await a.stubs[0].CreateApiKey(
        auth_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name="k"), metadata=ADMIN
    )
    key_id = key.key.key_id
    assert isinstance(await b.reserve(0, 1, key_id), auth_pb2.Reservation)  # b knows the tenant

    made = await a.stubs[0].Restrict(
        auth_pb2.RestrictRequest(
            key_id=key_id,
            action=auth_pb2.RESTRICTION_ACTION_SUSPEND,
            duration=duration_pb2.Duration(seconds=600),
            reason="leaked",
            actor="admin",
        ),
        metadata=ADMIN,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await b.reserve(0, 1, key_id)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    await b.stubs[0].LiftRestriction(
        auth_pb2.LiftRestrictionRequest(restriction_id=made.restriction_id, actor="admin"),
        metadata=ADMIN,
    )
    assert isinstance(await a.reserve(0, 1, key_id), auth_pb2.Reservation)


async def test_a_duplicate_on_another_replica_is_aborted_while_it_runs_then_already_exists(
    replicas: list[grpc.aio.Channel],
) -> None:
    spread = Spread(replicas[:2])
    tenant_id = await spread.tenant(auth_pb2.Plan())

    def reserve(request_id: str) -> auth_pb2.ReserveRequest:
        request = auth_pb2.ReserveRequest(
            tenant_id=tenant_id, request_id=request_id, model="tiny", estimated_tokens=5
        )
        request.idempotency_key = "order-7"
        return request

    first = await spread.stub(0).Reserve(reserve("mesh-1"))
    with pytest.raises(grpc.aio.AioRpcError) as running:
        await spread.stub(1).Reserve(reserve("mesh-2"))
    assert running.value.code() == grpc.StatusCode.ABORTED
    await spread.stub(1).Commit(
        auth_pb2.CommitRequest(reservation_id=first.reservation_id, used_tokens=5)
    )
    with pytest.raises(grpc.aio.AioRpcError) as billed:
        await spread.stub(0).Reserve(reserve("mesh-3"))
    assert billed.value.code() == grpc.StatusCode.ALREADY_EXISTS
