"""Auth and metering throughput and latency, side by side:

  - Authenticate p50/p99 through the gateway's authenticator, with its cache
    (TTL 5 s) and without (TTL 0: every call goes to auth),
  - Reserve+Commit pairs per second,
  - RecordUsage records per second on SQLite and on PostgreSQL, one record
    per call and (record_usage_batch) 100 per RecordUsageBatch call, as the
    gateway's outbox sends them,

at 1 and 64 concurrent callers, against the auth service run as its own
process. Cells take turns within each round; medians and ranges over rounds.

    .venv/bin/python -m bench.auth_metering [--rounds 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.cli import run_on_uvloop
from bench.inference_streaming import free_port
from bench.stats import percentile, summary, write_results
from gateway.authn import Authenticator
from maas.v1 import auth_pb2, auth_pb2_grpc, metering_pb2, metering_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
BENCH_ADMIN_TOKEN = "bench-operator-token-0123456789abcdef"  # auth takes 32 characters or more
ADMIN = (("authorization", f"Bearer {BENCH_ADMIN_TOKEN}"),)
BATCH = 100
# An operation returns how many units it did: records for the batch, else 1.
Op = Callable[[int], Awaitable[int]]


@contextlib.asynccontextmanager
async def auth_process(database_args: list[str]) -> AsyncIterator[grpc.aio.Channel]:
    port = free_port()
    env = dict(os.environ, MAAS_AUTH_ADMIN_TOKEN=BENCH_ADMIN_TOKEN, MAAS_AUTH_KEY_PEPPER="p" * 32)
    env["MAAS_AUTH_TELEMETRY__LOG_LEVEL"] = "WARNING"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.auth", "--port", str(port), *database_args],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="maas.v1.Auth")
        async for update in health.Watch(request, wait_for_ready=True, timeout=60):
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                break
        yield channel
    finally:
        await channel.close()
        process.terminate()
        process.wait()


async def measure(op: Op, concurrency: int, seconds: float) -> dict[str, float]:
    """Runs `op` from `concurrency` callers for `seconds`; units/s and latency per call."""
    latencies: list[float] = []
    units = 0
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def caller() -> None:
        nonlocal units
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            done = await op(next(counter))
            units += done
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "ops_per_s": units / wall,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


def usage_record(run: str, i: int) -> metering_pb2.UsageRecord:
    return metering_pb2.UsageRecord(
        request_id=f"{run}-{i}",
        tenant_id="bench-tenant",
        key_id="k",
        model="tiny",
        prompt_tokens=20,
        completion_tokens=100,
        start_time=timestamp_pb2.Timestamp(seconds=1_800_000_000),
        end_time=timestamp_pb2.Timestamp(seconds=1_800_000_001),
        status=metering_pb2.REQUEST_STATUS_COMPLETED,
    )


async def ops_for(channel: grpc.aio.Channel, with_auth: bool) -> dict[str, Op]:
    auth = auth_pb2_grpc.AuthStub(channel)
    metering = metering_pb2_grpc.MeteringStub(channel)
    run = uuid.uuid4().hex[:8]
    ops: dict[str, Op] = {}

    async def record(i: int) -> int:
        await metering.RecordUsage(metering_pb2.RecordUsageRequest(record=usage_record(run, i)))
        return 1

    async def record_batch(i: int) -> int:
        records = [usage_record(f"{run}-b{i}", j) for j in range(BATCH)]
        reply = await metering.RecordUsageBatch(
            metering_pb2.RecordUsageBatchRequest(records=records)
        )
        assert not any(r.error.code for r in reply.results)
        return BATCH

    ops["record_usage"] = record
    ops["record_usage_batch"] = record_batch
    if not with_auth:
        return ops
    tenant = await auth.CreateTenant(
        # Unlimited: Reserve's own cost is measured, not the default plan's limits.
        auth_pb2.CreateTenantRequest(name=f"bench-{run}", plan=auth_pb2.Plan()),
        metadata=ADMIN,
    )
    key = await auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=ADMIN
    )
    bearer = (("authorization", f"Bearer {key.api_key}"),)
    cached, uncached = (
        Authenticator(
            auth,
            ttl_s=ttl_s,
            max_entries=1000,
            timeout_s=5.0,
            negative_ttl_s=5.0,
            negative_max_entries=1000,
        )
        for ttl_s in (5.0, 0.0)
    )

    async def auth_cached(i: int) -> int:
        await cached.authenticate(bearer, "generate")
        return 1

    async def auth_uncached(i: int) -> int:
        await uncached.authenticate(bearer, "generate")
        return 1

    async def reserve_commit(i: int) -> int:
        held = await auth.Reserve(
            auth_pb2.ReserveRequest(
                tenant_id=tenant.tenant_id,
                request_id=f"{run}-rc-{i}",
                model="tiny",
                estimated_tokens=100,
            )
        )
        await auth.Commit(
            auth_pb2.CommitRequest(reservation_id=held.reservation_id, used_tokens=80)
        )
        return 1

    ops.update(
        authenticate_cached=auth_cached,
        authenticate_uncached=auth_uncached,
        reserve_commit=reserve_commit,
    )
    return ops


async def main_async(args: argparse.Namespace) -> None:
    dsn = subprocess.run(
        ["bash", str(REPO / "deploy" / "local" / "postgres.sh")],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    import asyncpg

    database = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE DATABASE {database}")
    sqlite_path = REPO / ".maas" / "bench" / f"auth-{uuid.uuid4().hex[:8]}.db"
    sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    cells: dict[str, list[dict[str, float]]] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            sqlite_ch = await stack.enter_async_context(
                auth_process(["--database-path", str(sqlite_path)])
            )
            pg_ch = await stack.enter_async_context(
                auth_process(["--database-url", dsn.rsplit("/", 1)[0] + f"/{database}"])
            )
            sqlite_ops = await ops_for(sqlite_ch, with_auth=True)
            pg_ops = await ops_for(pg_ch, with_auth=False)
            plan = [(f"{name} [sqlite]", op) for name, op in sqlite_ops.items()] + [
                (f"{name} [postgres]", op) for name, op in pg_ops.items()
            ]
            for _, op in plan:  # warm-up
                await measure(op, 4, 0.3)
            for round_ in range(args.rounds):
                rotated = plan[round_ % len(plan) :] + plan[: round_ % len(plan)]
                for concurrency in (1, 64):
                    for name, op in rotated:
                        cell = f"{name} x{concurrency}"
                        cells.setdefault(cell, []).append(
                            await measure(op, concurrency, args.seconds)
                        )
                print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        await admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
        await admin.close()
        sqlite_path.unlink(missing_ok=True)

    table = {
        cell: {m: summary([r[m] for r in runs]) for m in ("ops_per_s", "p50_ms", "p99_ms")}
        for cell, runs in cells.items()
    }
    lines = [f"{'operation':<40} {'ops (records)/s':>24} {'p50 ms':>20} {'p99 ms':>20}"]
    lines.append("-" * len(lines[0]))
    for cell in sorted(table):
        t = table[cell]
        lines.append(
            f"{cell:<40} "
            + " ".join(
                f"{t[m]['median']:.{d}f} [{t[m]['min']:.{d}f}-{t[m]['max']:.{d}f}]".rjust(w)
                for m, d, w in (("ops_per_s", 0, 24), ("p50_ms", 2, 20), ("p99_ms", 2, 20))
            )
        )
    write_results(
        "auth_metering",
        "\n".join(lines),
        rounds=args.rounds,
        seconds_per_cell=args.seconds,
        summary=table,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    run_on_uvloop(main_async, parser)


if __name__ == "__main__":
    main()
