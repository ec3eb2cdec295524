"""Replicas killed under load, as processes: an auth replica SIGKILLed while a
gateway dials two fails no request and bills each once; a gateway SIGKILLed
with usage in its outbox loses none of it, as another gateway adopts the
file. Router and inference (simulated) run in-process; auth and the
gateways are real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import grpc
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maas.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    gateway_pb2_grpc,
    generation_pb2,
    metering_pb2,
)
from services.mesh import MeshOptions, RunningMesh, running_mesh
from tests.support import eventually, free_port

REPO = Path(__file__).resolve().parents[2]
MODEL = "sim-tiny"
ADMIN_TOKEN = "a" * 32
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
# Both auth replicas must hash keys alike.
AUTH_ENV = {"MAAS_AUTH_ADMIN_TOKEN": ADMIN_TOKEN, "MAAS_AUTH_KEY_PEPPER": "p" * 32}


@pytest_asyncio.fixture
async def sim_mesh(tmp_path: Path) -> AsyncIterator[RunningMesh]:
    """Router and a simulated replica (the mesh's own auth is not the one the
    gateways under test dial)."""
    options = MeshOptions(
        state=tmp_path,
        model=MODEL,
        overrides={
            "inference": {"engine": "sim", "sim_profile": "tiny-cpu", "stream_messages_per_s": 0}
        },
    )
    async with running_mesh(options) as mesh:
        yield mesh


async def wait_serving(port: int, service: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        request = health_pb2.HealthCheckRequest(service=service)
        async for update in health_pb2_grpc.HealthStub(ch).Watch(
            request, wait_for_ready=True, timeout=60
        ):
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                return


async def start(module: str, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env={**os.environ, **env}, cwd=REPO,
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip


async def start_gateway(
    port: int, auth_ports: list[int], mesh: RunningMesh, outbox_dir: Path, log: Path
) -> asyncio.subprocess.Process:
    env = {
        "MAAS_GATEWAY_PORT": str(port),
        "MAAS_GATEWAY_HTTP_PORT": "null",
        "MAAS_GATEWAY_ROUTER_ADDRESS": mesh.targets["router"],
        "MAAS_GATEWAY_AUTH_ADDRESS": ",".join(f"127.0.0.1:{p}" for p in auth_ports),
        "MAAS_GATEWAY_ANOMALY_ADDRESS": mesh.targets["anomaly"],
        "MAAS_GATEWAY_USAGE_OUTBOX_DIR": str(outbox_dir),
        # Often, so that an orphaned file is adopted soon after the gateway starts.
        "MAAS_GATEWAY_USAGE_OUTBOX_ADOPT_INTERVAL_S": "0.2",
        "MAAS_GATEWAY_USAGE_PROGRESS_INTERVAL_S": "0.2",
        # Every request asks auth, so every request meets the replica being killed.
        "MAAS_GATEWAY_AUTH_CACHE_TTL_S": "0",
    }
    process = await start("gateway", env, log)
    await asyncio.wait_for(wait_serving(port, "maas.v1.Gateway"), 60)
    return process


async def new_key(auth_port: int, plan: auth_pb2.Plan) -> tuple[str, str]:
    """A new tenant on `plan` and an API key of it."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_port}") as ch:
        stub = auth_pb2_grpc.AuthStub(ch)
        tenant = await stub.CreateTenant(
            auth_pb2.CreateTenantRequest(name=f"t-{uuid.uuid4().hex[:8]}"), metadata=ADMIN
        )
        await stub.SetPlan(
            auth_pb2.SetPlanRequest(tenant_id=tenant.tenant_id, plan=plan),
            metadata=ADMIN,
        )
        created = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="load"), metadata=ADMIN
        )
        return tenant.tenant_id, created.api_key


async def generate(
    stub: gateway_pb2_grpc.GatewayAsyncStub, key: str, max_tokens: int
) -> generation_pb2.GenerateResponse:
    """The stream's last chunk (its usage covers the whole stream)."""
    last = generation_pb2.GenerateResponse()
    async for chunk in stub.Generate(
        generation_pb2.GenerateRequest(
            model=MODEL, prompt="Tell me", max_tokens=max_tokens, ignore_eos=True
        ),
        metadata=(("authorization", f"Bearer {key}"),),
        timeout=60,
    ):
        last = chunk
    return last


async def ledger(database_url: str, tenant_id: str) -> list[tuple[str, int]]:
    db = await asyncpg.connect(database_url)
    try:
        rows = await db.fetch(
            "SELECT request_id, completion_tokens FROM usage_records WHERE tenant_id = $1",
            tenant_id,
        )
    finally:
        await db.close()
    return [(str(r[0]), int(r[1])) for r in rows]


async def slots_free(auth_port: int, tenant_id: str, slots: int) -> bool:
    """Whether exactly `slots` reservations fit now (each released again)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_port}") as ch:
        stub = auth_pb2_grpc.AuthStub(ch)
        held: list[str] = []
        try:
            for _ in range(slots + 1):
                reservation = await stub.Reserve(
                    auth_pb2.ReserveRequest(
                        tenant_id=tenant_id,
                        request_id=uuid.uuid4().hex,
                        model=MODEL,
                        estimated_tokens=1,
                    )
                )
                held.append(reservation.reservation_id)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
        finally:
            for reservation_id in held:
                await stub.Release(auth_pb2.ReleaseRequest(reservation_id=reservation_id))
        return len(held) == slots


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        await process.wait()


# Streams at once, and how many complete before and after the kill.
WORKERS = 8
# The plan's concurrency: room for each worker's next request while its last
# one's Commit, sent off the request path, is still on its way.
SLOTS = 2 * WORKERS
BEFORE_KILL = 24
AFTER_KILL = 48
TOKENS = 16


async def test_an_auth_replica_killed_under_load_fails_no_request_and_bills_each_once(
    sim_mesh: RunningMesh, shared_database: str, redis_url: str, tmp_path: Path
) -> None:
    """The production shape: both replicas on one PostgreSQL and one Redis.
    Afterwards the tenant's concurrency slots are all free again on the
    survivor: a lease the dying replica took and never handed back, or a
    Reserve retried on the survivor that took a second slot, would hold one."""
    auth_ports = [free_port(), free_port()]
    async with AsyncExitStack() as stack:
        auths = []
        for i, port in enumerate(auth_ports):
            env_db = {"MAAS_AUTH_DATABASE_URL": shared_database, "MAAS_AUTH_QUOTA_URL": redis_url}
            process = await start(
                "services.auth",
                {**AUTH_ENV, **env_db, "MAAS_AUTH_PORT": str(port)},
                tmp_path / f"auth-{i}.log",
            )
            stack.push_async_callback(stop, process)
            auths.append(process)
        for port in auth_ports:
            await asyncio.wait_for(wait_serving(port, "maas.v1.Auth"), 60)
        tenant_id, key = await new_key(auth_ports[0], auth_pb2.Plan(max_concurrent_requests=SLOTS))
        gateway_port = free_port()
        gateway = await start_gateway(
            gateway_port, auth_ports, sim_mesh, tmp_path / "outbox", tmp_path / "gateway.log"
        )
        stack.push_async_callback(stop, gateway)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            done: list[generation_pb2.GenerateResponse] = []
            failures: list[grpc.aio.AioRpcError] = []
            killed = asyncio.Event()

            async def worker() -> None:
                while len(done) + len(failures) < BEFORE_KILL + AFTER_KILL:
                    try:
                        done.append(await generate(stub, key, TOKENS))
                    except grpc.aio.AioRpcError as err:
                        failures.append(err)
                    if len(done) >= BEFORE_KILL and not killed.is_set():
                        killed.set()
                        auths[0].send_signal(signal.SIGKILL)

            await asyncio.gather(*(worker() for _ in range(WORKERS)))
            await auths[0].wait()

        assert auths[0].returncode == -signal.SIGKILL
        assert [(e.code(), e.details()) for e in failures] == []
        assert len(done) >= BEFORE_KILL + AFTER_KILL
        assert all(r.usage.completion_tokens == TOKENS for r in done)

        async def all_billed() -> bool:
            return len(await ledger(shared_database, tenant_id)) >= len(done)

        await eventually(all_billed, within_s=30)
        billed = await ledger(shared_database, tenant_id)
        # One record a request (the ledger keys them by request id), each whole.
        assert len(billed) == len(done)
        assert {tokens for _, tokens in billed} == {TOKENS}
        await eventually(lambda: slots_free(auth_ports[1], tenant_id, SLOTS), within_s=30)


def outbox_rows(directory: Path) -> list[metering_pb2.UsageRecord]:
    records: list[metering_pb2.UsageRecord] = []
    for path in directory.glob("gateway-*.db"):
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT record FROM outbox").fetchall()
        records += [metering_pb2.UsageRecord.FromString(r[0]) for r in rows]
    return records


STREAMS = 4
LONG = 400


async def test_a_gateway_killed_with_usage_in_its_outbox_loses_none_of_it(
    sim_mesh: RunningMesh, shared_database: str, tmp_path: Path
) -> None:
    auth_port = free_port()
    auth_env = {**AUTH_ENV, "MAAS_AUTH_DATABASE_URL": shared_database}
    auth_env["MAAS_AUTH_PORT"] = str(auth_port)
    outbox = tmp_path / "outbox"
    async with AsyncExitStack() as stack:
        auth = await start("services.auth", auth_env, tmp_path / "auth.log")
        await asyncio.wait_for(wait_serving(auth_port, "maas.v1.Auth"), 60)
        tenant_id, key = await new_key(auth_port, auth_pb2.Plan())
        first_port = free_port()
        first = await start_gateway(
            first_port, [auth_port], sim_mesh, outbox, tmp_path / "gateway-1.log"
        )
        stack.push_async_callback(stop, first)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{first_port}") as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            calls = [
                stub.Generate(
                    generation_pb2.GenerateRequest(
                        model=MODEL, prompt="Go on", max_tokens=LONG, ignore_eos=True
                    ),
                    metadata=(("authorization", f"Bearer {key}"),),
                )
                for _ in range(STREAMS)
            ]
            # Every stream admitted (reserved in auth) before auth goes away.
            for call in calls:
                await call.read()
            auth.send_signal(signal.SIGKILL)
            await auth.wait()
            totals = []
            for call in calls:
                last = generation_pb2.GenerateResponse()
                while (chunk := await call.read()) is not grpc.aio.EOF:
                    assert isinstance(chunk, generation_pb2.GenerateResponse)
                    last = chunk
                totals.append(last.usage.completion_tokens)
        assert totals == [LONG] * STREAMS

        # The streams' final records wait in the outbox: the ledger is down.
        def finals_on_disk() -> bool:
            finals = [
                r for r in outbox_rows(outbox) if r.status == metering_pb2.REQUEST_STATUS_COMPLETED
            ]
            return len(finals) == STREAMS

        await eventually(finals_on_disk)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        orphaned = set(outbox.glob("gateway-*.db"))
        assert len(orphaned) == 1

        # Auth back; a second gateway adopts the lost one's file.
        auth = await start("services.auth", auth_env, tmp_path / "auth.log")
        stack.push_async_callback(stop, auth)
        await asyncio.wait_for(wait_serving(auth_port, "maas.v1.Auth"), 60)
        second = await start_gateway(
            free_port(), [auth_port], sim_mesh, outbox, tmp_path / "gateway-2.log"
        )
        stack.push_async_callback(stop, second)

        async def delivered() -> bool:
            return len(await ledger(shared_database, tenant_id)) == STREAMS and not (
                orphaned & set(outbox.glob("gateway-*.db"))
            )

        await eventually(delivered, within_s=30)
        billed = await ledger(shared_database, tenant_id)
        assert sorted(tokens for _, tokens in billed) == [LONG] * STREAMS
        # Only the second gateway's own file is left.
        assert len(list(outbox.glob("gateway-*.db"))) == 1
