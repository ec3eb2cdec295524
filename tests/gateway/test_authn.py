"""The gateway's authentication cache, against a fake auth stub (named as such):
the behaviour under test is the cache's, and expiry needs a controlled clock."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.authn import Authenticator, bearer_token
from maas.v1 import auth_pb2
from services.common.errors import PermissionDeniedError, UnauthenticatedError


class FakeAuthStub:
    """Answers Authenticate from a dict; counts calls; can be made slow."""

    def __init__(self, keys: dict[str, auth_pb2.Principal]) -> None:
        self.keys = keys
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def Authenticate(self, request: auth_pb2.AuthenticateRequest) -> auth_pb2.Principal:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        principal = self.keys.get(request.api_key)
        if principal is None:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="unknown key",
            )
        return principal


def principal(*scopes: str) -> auth_pb2.Principal:
    return auth_pb2.Principal(tenant_id="t1", key_id="k1", scopes=list(scopes))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def md(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Basic abc"),), (("authorization", "Bearer "),)],
)
def test_missing_or_malformed_authorization_is_unauthenticated(
    metadata: tuple[tuple[str, str], ...],
) -> None:
    with pytest.raises(UnauthenticatedError):
        bearer_token(metadata)


async def test_cache_serves_until_ttl_then_asks_again() -> None:
    stub = FakeAuthStub({"good": principal("generate")})
    clock = Clock()
    authn = Authenticator(stub, ttl_s=5.0, max_entries=10, clock=clock)  # type: ignore[arg-type]
    await authn.authenticate(md("good"), "generate")
    clock.now = 4.9
    await authn.authenticate(md("good"), "generate")
    assert stub.calls == 1
    del stub.keys["good"]  # revoked in auth
    clock.now = 5.1
    with pytest.raises(UnauthenticatedError):
        await authn.authenticate(md("good"), "generate")
    assert stub.calls == 2


async def test_concurrent_misses_share_one_auth_call() -> None:
    stub = FakeAuthStub({"good": principal("generate")})
    stub.gate = asyncio.Event()
    authn = Authenticator(stub, ttl_s=5.0, max_entries=10)  # type: ignore[arg-type]
    waiters = [asyncio.create_task(authn.authenticate(md("good"), "generate")) for _ in range(20)]
    await asyncio.sleep(0)
    stub.gate.set()
    results = await asyncio.gather(*waiters)
    assert stub.calls == 1
    assert all(r.tenant_id == "t1" for r in results)


async def test_missing_scope_is_permission_denied() -> None:
    stub = FakeAuthStub({"reader": principal("usage:read")})
    authn = Authenticator(stub, ttl_s=5.0, max_entries=10)  # type: ignore[arg-type]
    with pytest.raises(PermissionDeniedError):
        await authn.authenticate(md("reader"), "generate")
    assert (await authn.authenticate(md("reader"), "usage:read")).key_id == "k1"


async def test_cache_is_bounded() -> None:
    stub = FakeAuthStub({f"k{i}": principal("generate") for i in range(5)})
    authn = Authenticator(stub, ttl_s=60.0, max_entries=2)  # type: ignore[arg-type]
    for i in range(5):
        await authn.authenticate(md(f"k{i}"), "generate")
    await authn.authenticate(md("k0"), "generate")  # evicted long ago: asks again
    assert stub.calls == 6


async def test_a_caller_going_away_does_not_fail_the_others() -> None:
    stub = FakeAuthStub({"good": principal("generate")})
    stub.gate = asyncio.Event()
    authn = Authenticator(stub, ttl_s=5.0, max_entries=10)  # type: ignore[arg-type]
    first = asyncio.create_task(authn.authenticate(md("good"), "generate"))
    second = asyncio.create_task(authn.authenticate(md("good"), "generate"))
    await asyncio.sleep(0)
    first.cancel()
    stub.gate.set()
    assert (await second).tenant_id == "t1"
    assert stub.calls == 1
