"""The gateway's authentication cache, against a fake auth stub (named as such):
the behaviour under test is the cache's, and expiry needs a controlled clock.
The deadline is checked against a real gRPC server whose auth never answers
(a wedged auth: no real one wedges on demand)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from gateway.authn import Authenticator, bearer_token, within
from maas.v1 import auth_pb2, auth_pb2_grpc
from services.common.errors import PermissionDeniedError, UnauthenticatedError, UnavailableError


class FakeAuthStub:
    """Answers Authenticate from a dict; counts calls; can be made slow."""

    def __init__(self, keys: dict[str, auth_pb2.Principal]) -> None:
        self.keys = keys
        self.calls = 0
        self.timeouts: list[float | None] = []
        self.gate: asyncio.Event | None = None
        self.fail_with: grpc.StatusCode | None = None

    async def Authenticate(
        self,
        request: auth_pb2.AuthenticateRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC stub's keyword)
    ) -> auth_pb2.Principal:
        self.calls += 1
        self.timeouts.append(timeout)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise grpc.aio.AioRpcError(
                self.fail_with, grpc.aio.Metadata(), grpc.aio.Metadata(), details="auth says no"
            )
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


def authenticator(stub: Any, **overrides: Any) -> Authenticator:
    settings: dict[str, Any] = {
        "ttl_s": 5.0,
        "max_entries": 10,
        "timeout_s": 3.0,
        "negative_ttl_s": 5.0,
        "negative_max_entries": 10,
    }
    return Authenticator(stub, **(settings | overrides))


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
    authn = authenticator(stub, clock=clock)
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
    authn = authenticator(stub)
    waiters = [asyncio.create_task(authn.authenticate(md("good"), "generate")) for _ in range(20)]
    await asyncio.sleep(0)
    stub.gate.set()
    results = await asyncio.gather(*waiters)
    assert stub.calls == 1
    assert all(r.tenant_id == "t1" for r in results)


async def test_missing_scope_is_permission_denied() -> None:
    stub = FakeAuthStub({"reader": principal("usage:read")})
    authn = authenticator(stub)
    with pytest.raises(PermissionDeniedError):
        await authn.authenticate(md("reader"), "generate")
    assert (await authn.authenticate(md("reader"), "usage:read")).key_id == "k1"


async def test_cache_is_bounded() -> None:
    stub = FakeAuthStub({f"k{i}": principal("generate") for i in range(5)})
    authn = authenticator(stub, ttl_s=60.0, max_entries=2)
    for i in range(5):
        await authn.authenticate(md(f"k{i}"), "generate")
    await authn.authenticate(md("k0"), "generate")  # evicted long ago: asks again
    assert stub.calls == 6


async def test_a_caller_going_away_does_not_fail_the_others() -> None:
    stub = FakeAuthStub({"good": principal("generate")})
    stub.gate = asyncio.Event()
    authn = authenticator(stub)
    first = asyncio.create_task(authn.authenticate(md("good"), "generate"))
    second = asyncio.create_task(authn.authenticate(md("good"), "generate"))
    await asyncio.sleep(0)
    first.cancel()
    stub.gate.set()
    assert (await second).tenant_id == "t1"
    assert stub.calls == 1


async def test_a_refused_key_is_refused_here_until_its_window_ends() -> None:
    stub = FakeAuthStub({})
    clock = Clock()
    authn = authenticator(stub, negative_ttl_s=5.0, clock=clock)
    for _ in range(10):
        with pytest.raises(UnauthenticatedError, match="unknown key"):
            await authn.authenticate(md("made-up"), "generate")
    assert stub.calls == 1
    clock.now = 5.1
    stub.keys["made-up"] = principal("generate")  # since created for real
    assert (await authn.authenticate(md("made-up"), "generate")).tenant_id == "t1"
    assert stub.calls == 2


async def test_a_flood_of_made_up_keys_costs_one_lookup_each() -> None:
    stub = FakeAuthStub({"good": principal("generate")})
    stub.gate = asyncio.Event()
    authn = authenticator(stub, negative_max_entries=1000)
    keys = [f"guess-{i}" for i in range(50)]
    attempts = [asyncio.create_task(authn.authenticate(md(key), "generate")) for key in keys * 3]
    await asyncio.sleep(0)
    stub.gate.set()
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    assert all(isinstance(o, UnauthenticatedError) for o in outcomes)
    assert stub.calls == len(keys)
    for key in keys:  # replayed: answered here
        with pytest.raises(UnauthenticatedError):
            await authn.authenticate(md(key), "generate")
    assert stub.calls == len(keys)
    await authn.authenticate(md("good"), "generate")
    assert stub.calls == len(keys) + 1


async def test_the_refused_keys_are_bounded_and_leave_known_keys_alone() -> None:
    stub = FakeAuthStub({"good": principal("generate")})
    authn = authenticator(stub, negative_max_entries=2)
    await authn.authenticate(md("good"), "generate")
    for i in range(5):
        with pytest.raises(UnauthenticatedError):
            await authn.authenticate(md(f"guess-{i}"), "generate")
    with pytest.raises(UnauthenticatedError):
        await authn.authenticate(md("guess-0"), "generate")  # evicted: asked again
    assert stub.calls == 1 + 5 + 1
    await authn.authenticate(md("good"), "generate")  # still cached
    assert stub.calls == 7


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_auth_not_answering_is_unavailable_and_not_remembered(code: grpc.StatusCode) -> None:
    stub = FakeAuthStub({"good": principal("generate")})
    stub.fail_with = code
    authn = authenticator(stub, timeout_s=2.5)
    with pytest.raises(UnavailableError) as info:
        await authn.authenticate(md("good"), "generate")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert stub.timeouts == [2.5]
    stub.fail_with = None  # auth is back: the key works at once
    assert (await authn.authenticate(md("good"), "generate")).tenant_id == "t1"


async def wedged_authenticate(request: auth_pb2.AuthenticateRequest, context: Any) -> None:
    """A fake auth's Authenticate (named as such): it never answers."""
    await asyncio.Event().wait()


@pytest_asyncio.fixture
async def wedged_auth() -> AsyncIterator[auth_pb2_grpc.AuthStub]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        wedged_authenticate,
        request_deserializer=auth_pb2.AuthenticateRequest.FromString,
        response_serializer=auth_pb2.Principal.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("maas.v1.Auth", {"Authenticate": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield auth_pb2_grpc.AuthStub(channel)
    await server.stop(0)


async def test_a_wedged_auth_answers_unavailable_by_the_deadline(
    wedged_auth: auth_pb2_grpc.AuthStub,
) -> None:
    authn = authenticator(wedged_auth, timeout_s=0.2)
    with pytest.raises(UnavailableError, match="did not answer in time"):
        await authn.authenticate(md("maas_k_s"), "generate")


def test_a_downstream_timeout_is_the_callers_remaining_time_capped() -> None:
    assert within(None, 3.0) == 3.0
    assert within(1.0, 3.0) == 1.0
    assert within(10.0, 3.0) == 3.0
