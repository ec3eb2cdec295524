"""A caller whose refusal budget is spent and who keeps calling is answered
RESOURCE_EXHAUSTED only once the wait its RetryInfo names has passed (at
most the hold cap): its refusal is held, while other callers are served.
At most a few held calls per caller and in all; past them, answered at once.
A client that gives up lets its hold go at once. A real gateway over real
auth and the simulated engine.

Sequencing here is by order (a call still held while another is answered,
the gateway's gauge of held calls), never by wall-clock durations."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from maas.v1 import auth_pb2, auth_pb2_grpc, gateway_pb2, gateway_pb2_grpc, generation_pb2
from services.mesh import InMemoryTelemetry, MeshOptions, RunningMesh, running_mesh
from tests.support import eventually, metric_total

MODEL = "sim-tiny"
BURST = 2
# Held calls per caller and in all.
PER_CALLER = 2
TOTAL = 3
# Far below the budget's wait (refilled at 0.01 a second: some 100 s), so
# every hold here is the cap's, and the RetryInfo still names the full wait.
MAX_HOLD_S = 3.0
# The held requests' bytes in all: a few small requests, not one of 64 kB.
HOLD_BYTES = 64 * 1024
# An address of the loopback network of its own (Linux routes all of
# 127/8 to lo), so spending its budget of failed authentications leaves
# 127.0.0.1, where the tests' other clients call from, alone.
STRANGER = "127.0.0.2"


class Held:
    def __init__(self, mesh: RunningMesh, reader: InMemoryMetricReader, admin: str) -> None:
        self.mesh = mesh
        self.reader = reader
        self.admin = (("authorization", f"Bearer {admin}"),)

    def metric(self, name: str) -> float:
        return metric_total(self.reader, name)

    def holding(self) -> int:
        return int(self.metric("maas.gateway.refusals.holding"))

    async def until_holding(self, count: int) -> None:
        await eventually(lambda: self.holding() == count)

    async def new_key(self) -> str:
        async with grpc.aio.insecure_channel(self.mesh.target("auth")) as ch:
            auth = auth_pb2_grpc.AuthStub(ch)
            tenant = await auth.CreateTenant(
                auth_pb2.CreateTenantRequest(name=f"t-{secrets.token_hex(4)}"),
                metadata=self.admin,
            )
            key = await auth.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=self.admin
            )
        return key.api_key


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def held(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Held]:
    options = MeshOptions(
        state=tmp_path_factory.mktemp("refusal-holds"),
        model=MODEL,
        overrides={
            "inference": {"engine": "sim", "sim_profile": "tiny-cpu"},
            "gateway": {
                # Refilled far slower than the tests run: the burst is all there is.
                "refusal_burst": BURST,
                "refusals_per_s": 0.01,
                "auth_failure_burst": 1,
                "auth_failures_per_s": 0.01,
                "read_burst": BURST,
                "reads_per_s": 0.01,
                "refusal_hold_max_s": MAX_HOLD_S,
                "refusal_holds_per_caller": PER_CALLER,
                "refusal_holds": TOTAL,
                "refusal_hold_bytes": HOLD_BYTES,
            },
        },
    )
    telemetry = InMemoryTelemetry()
    async with running_mesh(options, telemetry=telemetry) as mesh:
        yield Held(mesh, telemetry.metrics["gateway"], options.admin_token)


ORDINARY = generation_pb2.GenerateRequest(model=MODEL, prompt="hi", max_tokens=4)
TOO_LONG = generation_pb2.GenerateRequest(model=MODEL, prompt="hi", max_tokens=100_000_000)


async def outcome(
    held: Held,
    api_key: str,
    request: generation_pb2.GenerateRequest = ORDINARY,
    timeout_s: float = 60.0,
) -> tuple[str, float]:
    """The call's status, and the wait its RetryInfo names (0 without one)."""
    async with grpc.aio.insecure_channel(held.mesh.target("gateway")) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Generate(
            request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=timeout_s
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as err:
            status = rpc_status.from_call(err)
            retry = error_details_pb2.RetryInfo()
            for detail in status.details if status else ():
                if detail.Is(retry.DESCRIPTOR):
                    detail.Unpack(retry)
            return err.code().name, retry.retry_delay.ToNanoseconds() / 1e9
    return "OK", 0.0


async def spent(held: Held) -> str:
    """A new tenant's key, its refusals spent on requests of its own fault."""
    key = await held.new_key()
    for _ in range(BURST):
        code, _ = await outcome(held, key, TOO_LONG)
        assert code == "INVALID_ARGUMENT"
    return key


async def test_a_caller_past_its_budget_is_answered_after_the_wait(held: Held) -> None:
    attacker, bystander = await spent(held), await held.new_key()
    assert await outcome(held, bystander) == ("OK", 0.0)  # its key seen accepted
    held_before = held.metric("maas.gateway.refusals.held")
    refused = asyncio.create_task(outcome(held, attacker))
    await held.until_holding(1)
    # Asked for during the hold, the bystander's generation is answered first.
    assert await outcome(held, bystander) == ("OK", 0.0)
    assert not refused.done()
    code, wait_s = await refused
    # The full wait (far past the hold's cap): the caller is told the truth.
    assert code == "RESOURCE_EXHAUSTED"
    assert wait_s > MAX_HOLD_S
    assert held.holding() == 0
    assert held.metric("maas.gateway.refusals.held") == held_before + 1

    # The HTTP face holds it too: a 429 with the full wait, once held.
    async with httpx.AsyncClient(
        base_url=f"http://{held.mesh.target('gateway', 'http_port')}", timeout=60
    ) as http:
        answer = asyncio.create_task(
            http.post(
                "/v1/completions",
                json={"model": MODEL, "prompt": "hi", "max_tokens": 4},
                headers={"authorization": f"Bearer {attacker}"},
            )
        )
        await held.until_holding(1)
        assert await outcome(held, bystander) == ("OK", 0.0)
        assert not answer.done()
        response = await answer
    assert response.status_code == 429, response.text
    assert float(response.headers["retry-after"]) > MAX_HOLD_S


async def test_a_caller_within_its_budget_is_never_held(held: Held) -> None:
    key = await held.new_key()
    held_before = held.metric("maas.gateway.refusals.held")
    unheld_before = held.metric("maas.gateway.refusals.unheld")
    # Refused for its own fault, within its budget: answered at once, as it
    # was, and then served.
    for _ in range(BURST - 1):
        assert (await outcome(held, key, TOO_LONG))[0] == "INVALID_ARGUMENT"
    for _ in range(3):
        assert await outcome(held, key) == ("OK", 0.0)
    assert held.metric("maas.gateway.refusals.held") == held_before
    assert held.metric("maas.gateway.refusals.unheld") == unheld_before


async def test_past_the_caps_a_refusal_is_answered_at_once(held: Held) -> None:
    first, second = await spent(held), await spent(held)
    unheld_before = held.metric("maas.gateway.refusals.unheld")
    holds = [asyncio.create_task(outcome(held, first)) for _ in range(PER_CALLER)]
    await held.until_holding(PER_CALLER)
    # The caller's holds are full: its next refusal is answered at once.
    assert (await outcome(held, first))[0] == "RESOURCE_EXHAUSTED"
    assert not any(h.done() for h in holds)
    holds.append(asyncio.create_task(outcome(held, second)))
    await held.until_holding(TOTAL)
    # All holds are full: another caller's, with room of its own, too.
    assert (await outcome(held, second))[0] == "RESOURCE_EXHAUSTED"
    assert not any(h.done() for h in holds)
    assert held.metric("maas.gateway.refusals.unheld") == unheld_before + 2
    for code, _ in await asyncio.gather(*holds):
        assert code == "RESOURCE_EXHAUSTED"
    assert held.holding() == 0


async def test_past_the_held_bytes_a_refusal_is_answered_at_once(held: Held) -> None:
    """A held call keeps its request: past HOLD_BYTES of them in all, a
    refusal is answered at once, so holds never keep more than that."""
    key = await spent(held)
    unheld_before = held.metric("maas.gateway.refusals.unheld")
    big = generation_pb2.GenerateRequest(model=MODEL, prompt="a" * HOLD_BYTES, max_tokens=4)
    kept = asyncio.create_task(outcome(held, key))
    await held.until_holding(1)
    # Answered while the small one before it is still held.
    assert (await outcome(held, key, big))[0] == "RESOURCE_EXHAUSTED"
    assert not kept.done()
    assert held.metric("maas.gateway.refusals.unheld") == unheld_before + 1
    assert (await kept)[0] == "RESOURCE_EXHAUSTED"


async def test_a_hold_ends_before_the_callers_deadline(held: Held) -> None:
    """Held to the cap (3 s), a call with a 2 s deadline would only ever read
    DEADLINE_EXCEEDED; its hold ends by half its deadline instead, and it
    reads the refusal with the wait it must keep."""
    key = await spent(held)
    code, wait_s = await outcome(held, key, timeout_s=2.0)
    assert code == "RESOURCE_EXHAUSTED"
    assert wait_s > MAX_HOLD_S


async def test_a_cancelled_held_call_frees_its_slot(held: Held) -> None:
    key = await spent(held)
    unheld_before = held.metric("maas.gateway.refusals.unheld")
    kept = asyncio.create_task(outcome(held, key))
    await held.until_holding(1)
    given_up = asyncio.create_task(outcome(held, key))
    await held.until_holding(2)
    given_up.cancel()
    # Freed while the call held before it (its timer due first) still is.
    await held.until_holding(1)
    assert not kept.done()
    # Its slot is free: the caller's next refusal is held, not answered at once.
    again = asyncio.create_task(outcome(held, key))
    await held.until_holding(2)
    assert held.metric("maas.gateway.refusals.unheld") == unheld_before
    for code, _ in await asyncio.gather(kept, again):
        assert code == "RESOURCE_EXHAUSTED"


async def post_with_random_key(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(STRANGER, 0))
    body = b'{"model":"sim-tiny","prompt":"hi","max_tokens":4}'
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: mesh\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer maas_{secrets.token_urlsafe(24)}\r\n".encode()
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return reader, writer


async def status_line(reader: asyncio.StreamReader) -> bytes:
    return await reader.readline()


async def test_an_address_failing_to_authenticate_is_held_and_a_client_that_leaves_lets_go(
    held: Held,
) -> None:
    port = held.mesh.services["gateway"].ports["http_port"]
    reader, writer = await post_with_random_key(port)
    assert (await status_line(reader)).startswith(b"HTTP/1.1 401")
    writer.close()
    # The address's budget is spent: its next unknown keys are held.
    kept_reader, kept_writer = await post_with_random_key(port)
    kept = asyncio.create_task(status_line(kept_reader))
    await held.until_holding(1)
    _, leaving = await post_with_random_key(port)
    await held.until_holding(2)
    leaving.close()
    # Let go while the request held before it (its timer due first) still is.
    await held.until_holding(1)
    assert not kept.done()
    assert (await kept).startswith(b"HTTP/1.1 429")
    kept_writer.close()
    # Another address's budget is its own: a new key from 127.0.0.1 is looked up.
    key = await held.new_key()
    assert await outcome(held, key) == ("OK", 0.0)


async def test_reads_past_their_budget_are_held_too(held: Held) -> None:
    key = await held.new_key()
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(held.mesh.target("gateway")) as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        for _ in range(BURST):
            await gateway.GetUsage(gateway_pb2.GetUsageRequest(), metadata=metadata)

        async def usage() -> object:
            return await gateway.GetUsage(gateway_pb2.GetUsageRequest(), metadata=metadata)

        refused = asyncio.create_task(usage())
        await held.until_holding(1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await refused
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("refusal_hold_max_s", 0),
        ("refusal_hold_max_s", 31),
        ("refusal_holds_per_caller", -1),
        ("refusal_holds_per_caller", 1025),
        ("refusal_holds", 16385),
        ("refusal_hold_bytes", -1),
        ("refusal_hold_bytes", (1 << 30) + 1),
    ],
)
def test_hold_settings_out_of_bounds_are_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as err:
        GatewaySettings.model_validate({field: value})
    assert err.value.errors()[0]["loc"] == (field,)
