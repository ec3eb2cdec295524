"""Reserve + Commit throughput and latency against the number of auth
replicas, side by side in one run:

  - memory x1: one auth process, quota state in its memory (the embedded
    default; it cannot run twice),
  - redis x1, x2, x4: 1, 2 and 4 auth processes sharing one Redis (quota
    state) and one PostgreSQL database (tenants, claims, ledger).

A closed loop of --concurrency clients, each doing Reserve then Commit,
spread round robin over the replicas (the Commit on the next replica, as a
gateway's round-robin channel would send it). The tenant's plan has every
limit set, high enough never to refuse, so every check runs (the monthly
budget's ledger read included). Systems take turns within each round;
medians and ranges over rounds.

    .venv/bin/python -m bench.auth_replicas [--rounds 3] [--seconds 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc

from bench.auth_metering import ADMIN, REPO, auth_process
from bench.cli import run_on_uvloop
from bench.stats import percentile, summary, write_results
from maas.v1 import auth_pb2, auth_pb2_grpc

# Limits no run of this benchmark reaches, so every check runs and none refuses.
HIGH_PLAN = auth_pb2.Plan(
    requests_per_minute=4_000_000_000,
    tokens_per_minute=10**15,
    max_concurrent_requests=1_000_000,
    monthly_token_budget=10**18,
)
ESTIMATE, USED = 200, 120  # tokens reserved and used by each request
SYSTEMS = (("memory", 1), ("redis", 1), ("redis", 2), ("redis", 4))
Pair = Callable[[int], Awaitable[None]]


def local_server(script: str) -> str:
    return subprocess.run(
        ["bash", str(REPO / "deploy" / "local" / script)],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip


async def pair_for(channels: list[grpc.aio.Channel]) -> Pair:
    stubs = [auth_pb2_grpc.AuthStub(c) for c in channels]
    tenant = await stubs[0].CreateTenant(
        auth_pb2.CreateTenantRequest(name=f"bench-{uuid.uuid4().hex}", plan=HIGH_PLAN),
        metadata=ADMIN,
    )
    run = uuid.uuid4().hex[:8]

    async def pair(i: int) -> None:
        held = await stubs[i % len(stubs)].Reserve(
            auth_pb2.ReserveRequest(
                tenant_id=tenant.tenant_id,
                request_id=f"{run}-{i}",
                model="tiny",
                estimated_tokens=ESTIMATE,
            )
        )
        await stubs[(i + 1) % len(stubs)].Commit(
            auth_pb2.CommitRequest(reservation_id=held.reservation_id, used_tokens=USED)
        )

    return pair


async def measure(pair: Pair, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def client() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await pair(next(counter))
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "pairs_per_s": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


async def main_async(args: argparse.Namespace) -> None:
    import asyncpg

    dsn = local_server("postgres.sh")
    redis_url = local_server("redis.sh")
    database = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE DATABASE {database}")
    database_url = dsn.rsplit("/", 1)[0] + f"/{database}"
    cells: dict[str, list[dict[str, float]]] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            pairs: dict[str, Pair] = {}
            for state, count in SYSTEMS:
                extra = ["--quota-url", redis_url] if state == "redis" else []
                # One at a time: the first creates the schema, and starting
                # eight at once on a small machine only makes each slower.
                channels = [
                    await stack.enter_async_context(
                        auth_process(["--database-url", database_url, *extra])
                    )
                    for _ in range(count)
                ]
                pairs[f"{state} x{count}"] = await pair_for(channels)
            print(f"{sum(c for _, c in SYSTEMS)} auth processes up", flush=True)
            for pair in pairs.values():  # warm-up
                await measure(pair, 4, 0.5)
            plan = list(pairs.items())
            for round_ in range(args.rounds):
                for name, pair in plan[round_ % len(plan) :] + plan[: round_ % len(plan)]:
                    cells.setdefault(name, []).append(
                        await measure(pair, args.concurrency, args.seconds)
                    )
                print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        await admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
        await admin.close()

    metrics = (("pairs_per_s", 0, 22), ("p50_ms", 2, 26), ("p99_ms", 2, 26))
    table = {
        name: {m: summary([r[m] for r in runs]) for m, _, _ in metrics}
        for name, runs in cells.items()
    }
    header = f"{'quota state x auth processes':<30}" + "".join(
        label.rjust(w) for label, w in (("Reserve+Commit/s", 22), ("p50 ms", 26), ("p99 ms", 26))
    )
    lines = [header, "-" * len(header)]
    for name, _ in plan:
        t = table[name]
        lines.append(
            f"{name:<30}"
            + "".join(
                f"{t[m]['median']:.{d}f} [{t[m]['min']:.{d}f}-{t[m]['max']:.{d}f}]".rjust(w)
                for m, d, w in metrics
            )
        )
    lines.append(
        f"{args.concurrency} closed-loop clients, {args.seconds:g} s a cell, {args.rounds} rounds;"
        " median [min-max]; one pair = Reserve + Commit"
    )
    write_results(
        "auth_replicas",
        "\n".join(lines),
        rounds=args.rounds,
        seconds_per_cell=args.seconds,
        concurrency=args.concurrency,
        summary=table,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    run_on_uvloop(main_async, parser)


if __name__ == "__main__":
    main()
