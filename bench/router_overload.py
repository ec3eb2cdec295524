"""Overload and fairness through the router: inference replicas (each its
own process and engine; two CPU-engine ones, or `--engine sim --replicas 8`
simulated GPU ones) behind one router (its own process).

Each round runs four phases, in turn:

  capacity    a closed loop of 1.5x as many clients as the replicas have
              slots (capped by the router's per-tenant queue): the mesh's tokens/s
  b_idle      tenant B alone, a light open-loop load (`--b-share` of capacity)
  overload    tenant A offers 5x the capacity (open loop, 30 s deadlines),
              B the same light load as in b_idle
  backlogged  A offers 5x, B 2x: both always have work waiting

and reports, median and range over rounds: goodput (tokens/s of completed
requests) against capacity, B's time to first token p99 under overload
against B alone on an idle mesh, Jain's index over the two tenants' served
tokens while both are backlogged (equal weights: 1.0 is a perfect split),
and what was shed, by status. Charts of queue depth and time to first token
over time (last round) go next to the JSON.

Where B's time to first token went, under b_idle and under overload (p50,
p99, and each part's mean over its slowest 1%): the router's wait and the
replica's call to its first chunk (Generate's trailing metadata), the
engine's queue within it (the first chunk's queued_s), and the client hops
(the rest); and, per phase, the cores busy on the machine, those this
benchmark's processes used (by role) and the share of the time some task
waited for a core (bench/cpu_use.py): a wait in neither queue, with that
share high, is CPU starvation.

    .venv/bin/python -m bench.router_overload [--rounds 3] [--seconds 20]
    .venv/bin/python -m bench.router_overload --engine sim --replicas 8 [--max-num-seqs 32]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import grpc

from bench import mesh, replica_flags
from bench.cli import run_on_uvloop
from bench.cpu_use import CpuSample, use_between
from bench.stats import RESULTS, percentile, summary, write_results
from maas.v1 import router_pb2, router_pb2_grpc
from services.router.servicer import REPLICA_FIRST_CHUNK_METADATA_KEY, ROUTER_WAIT_METADATA_KEY

TOKENS = 256
# Over simulated replicas: requests 4x longer (8.5 s at a full batch of the
# 8B profile), so a flood of 5x the capacity is 140 requests a second, not
# 560; at 560 the flood's own shedding took the router's and the clients'
# share of this machine's two cores and the light tenant measured that.
SIM_TOKENS = 1024
# The CPU engine's batch; simulated replicas default to a batch that keeps 8
# of them within what this machine's mesh can stream (see replica_flags).
MAX_NUM_SEQS = 64
SIM_MAX_NUM_SEQS = 32
# Clients waiting in the capacity loop beyond the slots: at most the router's
# per-tenant queue (256) less some, so none is refused.
MAX_EXTRA_CLIENTS = 200
WARMUP_S = 4.0  # of each phase, not counted
# Over simulated replicas: longer than a request at full batch (8.5 s), so
# the flood's first wave, started all at once, has ended before counting.
SIM_WARMUP_S = 10.0
DEADLINE_S = 30.0
PHASES = ("capacity", "b_idle", "overload", "backlogged")


@dataclass
class TimedOutcome(mesh.Outcome):
    """An outcome with where its time to first token went, from the router's
    trailing metadata and the first chunk: the router's part (receipt to the
    replica call), the engine's queue (queued_s), the replica's other part
    (the call to its first chunk at the router, less the engine's queue: the
    engine's first step, the hop, the replica's process), and the client's
    hops (the rest: client to router and back, each process's wait for a CPU
    included)."""

    router_s: float | None = None
    replica_s: float | None = None

    def parts(self) -> tuple[float, float, float, float, float] | None:
        """ttft, router, engine queue, replica other, client hops (seconds)."""
        if self.ttft is None or self.router_s is None or self.queued_s is None:
            return None
        if self.replica_s is None:
            return None
        replica_other = self.replica_s - self.queued_s
        hops = self.ttft - self.router_s - self.replica_s
        return self.ttft, self.router_s, self.queued_s, replica_other, hops


async def stream(call: grpc.aio.UnaryStreamCall, outcome: TimedOutcome) -> None:  # type: ignore[type-arg]
    """mesh.stream, also keeping the router's wait and the replica's part."""
    await mesh.stream(call, outcome)
    for key, value in await call.trailing_metadata() or ():
        if key == ROUTER_WAIT_METADATA_KEY:
            outcome.router_s = float(value)
        elif key == REPLICA_FIRST_CHUNK_METADATA_KEY:
            outcome.replica_s = float(value)


# Where B's time to first token went, p50 and p99 of each part, and the
# parts' mean over its slowest 1% (whose sum is their time to first token).
PARTS = ("ttft", "router", "engine_queue", "replica_other", "client_hops")


@dataclass
class PhaseResult:
    outcomes: list[TimedOutcome]
    window: tuple[float, float]
    queue: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    # The counted window's start and end (cpu_use.py).
    cpu: tuple[CpuSample, CpuSample] | None = None

    def cpu_use(self, prefix: str) -> dict[str, float]:
        return use_between(*self.cpu, prefix) if self.cpu is not None else {}

    def completed(self, tenant: str | None = None) -> list[TimedOutcome]:
        lo, hi = self.window
        return [
            o
            for o in self.outcomes
            if o.code == "OK"
            and o.end is not None
            and lo <= o.end <= hi
            and (tenant is None or o.tenant == tenant)
        ]

    def tokens_per_s(self, tenant: str | None = None) -> float:
        """Tokens of completed requests, each counted for the part of its
        stream (first token to end) inside the window: equal-length requests
        end in waves, and counting whole requests by end time would alias
        with them. Not from its start: a request queued through the end of
        the window and served after it made none of its tokens inside."""
        lo, hi = self.window
        total = 0.0
        for o in self.outcomes:
            if o.code != "OK" or o.end is None or (tenant is not None and o.tenant != tenant):
                continue
            begin = o.first_token if o.first_token is not None else o.start
            inside = max(0.0, min(o.end, hi) - max(begin, lo))
            total += o.tokens * inside / max(o.end - begin, 1e-9)
        return total / (hi - lo)

    def ttft_p99_ms(self, tenant: str) -> float:
        lo, hi = self.window
        ttfts = [
            o.ttft
            for o in self.outcomes
            if o.tenant == tenant and o.ttft is not None and lo <= o.start <= hi
        ]
        return percentile(ttfts, 99) * 1e3

    def breakdown(self, tenant: str, prefix: str) -> dict[str, float]:
        """p50 and p99 (ms) of each part of `tenant`'s time to first token,
        and each part's mean over the requests at or past its p99."""
        lo, hi = self.window
        timed = [
            parts
            for o in self.outcomes
            if o.tenant == tenant and lo <= o.start <= hi and (parts := o.parts()) is not None
        ]
        out: dict[str, float] = {}
        if not timed:
            return out
        for i, part in enumerate(PARTS):
            values = [t[i] for t in timed]
            out[f"{prefix}_{part}_p50_ms"] = percentile(values, 50) * 1e3
            out[f"{prefix}_{part}_p99_ms"] = percentile(values, 99) * 1e3
        p99 = percentile([t[0] for t in timed], 99)
        tail = [t for t in timed if t[0] >= p99]
        for i, part in enumerate(PARTS[1:], start=1):
            out[f"{prefix}_{part}_tail1pct_mean_ms"] = sum(t[i] for t in tail) / len(tail) * 1e3
        return out

    def codes(self, tenant: str) -> Counter[str]:
        """Outcomes by status; a failure after tokens had streamed is marked
        `mid-stream` (work the replica did for nothing), the rest were shed
        before any ran."""
        lo, hi = self.window
        return Counter(
            o.code + ("(mid-stream)" if o.code != "OK" and o.tokens else "")
            for o in self.outcomes
            if o.tenant == tenant and lo <= o.start <= hi
        )


class Load:
    """One tenant's load generator; each runs in its own process (as tenants
    are different clients), so a flood's client costs do not show up in the
    light tenant's measured latency."""

    def __init__(
        self, stub: router_pb2_grpc.RouterAsyncStub, model: str, seed: int, tokens: int
    ) -> None:
        self._stub = stub
        self._model = model
        self._tokens = tokens
        self._random = random.Random(seed)
        self._n = 0

    def _request(self, tenant: str) -> router_pb2.RouterGenerateRequest:
        self._n += 1
        # Distinct prompts of a few lengths; no shared prefix to speak of.
        count = self._random.choice((8, 16, 32))
        words = " ".join(f"w{self._random.randrange(10_000)}" for _ in range(count))
        return mesh.router_request(
            self._model,
            prompt=f"{tenant} {self._n}: {words}",
            max_tokens=self._tokens,
            tenant=tenant,
        )

    async def one(self, tenant: str, into: list[TimedOutcome]) -> None:
        outcome = TimedOutcome(tenant, time.perf_counter())
        into.append(outcome)
        call = self._stub.Generate(self._request(tenant), timeout=DEADLINE_S)
        await stream(call, outcome)

    async def closed_loop(
        self, tenant: str, clients: int, until: float, into: list[TimedOutcome]
    ) -> None:
        async def client() -> None:
            while time.perf_counter() < until:
                await self.one(tenant, into)

        await asyncio.gather(*(client() for _ in range(clients)))

    async def open_loop(
        self, tenant: str, rate: float, until: float, into: list[TimedOutcome]
    ) -> None:
        tasks: set[asyncio.Task[None]] = set()
        next_at = time.perf_counter()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            task = asyncio.create_task(self.one(tenant, into))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += self._random.expovariate(rate)
        # Requests still running at the end finish (or hit their deadline).
        if tasks:
            await asyncio.wait(tasks)


def tenant_load(
    router: str,
    model: str,
    tenant: str,
    kind: str,
    amount: float,
    until: float,
    seed: int,
    tokens: int,
) -> list[TimedOutcome]:
    """Runs in a worker process: a closed loop of `amount` clients or an open
    loop at `amount` requests/s, until `until` (perf_counter is system-wide)."""
    import uvloop

    async def run() -> list[TimedOutcome]:
        outcomes: list[TimedOutcome] = []
        async with grpc.aio.insecure_channel(router) as channel:
            load = Load(router_pb2_grpc.RouterStub(channel), model, seed, tokens)
            if kind == "closed":
                await load.closed_loop(tenant, int(amount), until, outcomes)
            else:
                await load.open_loop(tenant, amount, until, outcomes)
        return outcomes

    return uvloop.run(run())


async def sample_queue(
    stub: router_pb2_grpc.RouterAsyncStub, until: float, into: list[tuple[float, dict[str, int]]]
) -> None:
    while time.perf_counter() < until:
        stats = await stub.GetQueueStats(router_pb2.GetQueueStatsRequest())
        per_tenant: Counter[str] = Counter()
        for depth in stats.depths:
            per_tenant[depth.tenant_id] += depth.waiting
        into.append((time.perf_counter(), dict(per_tenant)))
        await asyncio.sleep(0.2)


async def run_phase(
    pool: ProcessPoolExecutor,
    router: str,
    model: str,
    stub: router_pb2_grpc.RouterAsyncStub,
    phase: str,
    capacity_rps: float,
    seconds: float,
    seed: int,
    slots: int,
    tokens: int,
    warmup_s: float,
) -> PhaseResult:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    until = start + warmup_s + seconds
    queue: list[tuple[float, dict[str, int]]] = []
    light = 0.1 * capacity_rps
    plan: list[tuple[str, str, float]] = []
    if phase == "capacity":
        # More clients than slots, so a slot freed is taken at once: with
        # exactly as many, each client's turnaround leaves its slot idle.
        plan.append(("cap", "closed", slots + min(slots // 2, MAX_EXTRA_CLIENTS)))
    if phase in ("b_idle", "overload"):
        plan.append(("B", "open", light))
    if phase in ("overload", "backlogged"):
        plan.append(("A", "open", 5 * capacity_rps))
    if phase == "backlogged":
        plan.append(("B", "open", 2 * capacity_rps))
    loads = [
        loop.run_in_executor(
            pool, tenant_load, router, model, t, kind, amount, until, seed + i, tokens
        )
        for i, (t, kind, amount) in enumerate(plan)
    ]
    sampler = asyncio.create_task(sample_queue(stub, until, queue))
    cpu = asyncio.create_task(sample_cpu(start + warmup_s, until))
    results = await asyncio.gather(*loads)
    await sampler
    return PhaseResult([o for r in results for o in r], (start + warmup_s, until), queue, await cpu)


async def sample_cpu(start: float, end: float) -> tuple[CpuSample, CpuSample]:
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    first = CpuSample.now()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    return first, CpuSample.now()


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 0.0


def chart(result: PhaseResult, phase: str, origin: float, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (depth_ax, ttft_ax) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for tenant in ("A", "B"):
        depth_ax.plot(
            [t - origin for t, _ in result.queue],
            [q.get(tenant, 0) for _, q in result.queue],
            label=f"tenant {tenant}",
        )
        points = [
            (o.start - origin, o.ttft * 1e3)
            for o in result.outcomes
            if o.tenant == tenant and o.ttft is not None
        ]
        ttft_ax.scatter(
            [p[0] for p in points], [p[1] for p in points], s=4, label=f"tenant {tenant}"
        )
    depth_ax.set_ylabel("requests queued in the router")
    depth_ax.legend()
    ttft_ax.set_ylabel("time to first token (ms)")
    ttft_ax.set_yscale("log")
    ttft_ax.set_xlabel("seconds into the phase")
    ttft_ax.legend()
    fig.suptitle(f"router under {phase}: A offers 5x capacity")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}_{phase}.png", dpi=100)
    plt.close(fig)


def profile_capacity(args: argparse.Namespace) -> float | None:
    """Decode tokens/s the simulated replicas make at full batch, from their
    profile (prefill left out: the prompts here are a few dozen tokens)."""
    profile = replica_flags.profile(args)
    if profile is None:
        return None
    slots: int = args.replicas * args.max_num_seqs
    return slots / profile.step_s(args.max_num_seqs, 0)


async def main_async(args: argparse.Namespace) -> None:
    sim = args.engine == "sim"
    if args.max_num_seqs is None:
        args.max_num_seqs = SIM_MAX_NUM_SEQS if sim else MAX_NUM_SEQS
    if args.tokens is None:
        args.tokens = SIM_TOKENS if sim else TOKENS
    if args.warmup_s is None:
        args.warmup_s = SIM_WARMUP_S if sim else WARMUP_S
    name = replica_flags.results_name("router_overload", args) + args.tag
    slots = args.replicas * args.max_num_seqs
    rows: dict[str, list[float]] = {}
    shed_totals: dict[str, Counter[str]] = {"A": Counter(), "B": Counter()}
    last: dict[str, PhaseResult] = {}
    async with AsyncExitStack() as stack:
        print(f"starting {replica_flags.describe(args)} and a router ...", flush=True)
        replicas, model = await replica_flags.start(stack, args, "overload")
        router = await stack.enter_async_context(
            mesh.router(replicas, "overload_router", *args.router_flags.split())
        )
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(router))
        stub = router_pb2_grpc.RouterStub(channel)
        pool = stack.enter_context(
            ProcessPoolExecutor(max_workers=3, mp_context=multiprocessing.get_context("spawn"))
        )
        phase_args = (pool, router, model, stub)
        # Warm-up (the router's limiters included).
        warm = await run_phase(
            *phase_args,
            "capacity",
            1.0,
            4.0,
            seed=1,
            slots=slots,
            tokens=args.tokens,
            warmup_s=WARMUP_S,
        )
        capacity_rps = warm.tokens_per_s() / args.tokens
        for round_ in range(args.rounds):
            results: dict[str, PhaseResult] = {}
            for phase in PHASES:
                results[phase] = await run_phase(
                    *phase_args,
                    phase,
                    capacity_rps,
                    args.seconds,
                    seed=100 * round_,
                    slots=slots,
                    tokens=args.tokens,
                    warmup_s=args.warmup_s,
                )
                await mesh.settle(3.0)
                if phase == "capacity":
                    capacity_rps = results[phase].tokens_per_s() / args.tokens
            capacity = results["capacity"].tokens_per_s()
            overload, backlogged, idle = (
                results["overload"],
                results["backlogged"],
                results["b_idle"],
            )
            row = {
                "capacity_tokens_per_s": capacity,
                "goodput_tokens_per_s": overload.tokens_per_s(),
                "goodput_over_capacity": overload.tokens_per_s() / capacity,
                "b_ttft_p99_idle_ms": idle.ttft_p99_ms("B"),
                "b_ttft_p99_overload_ms": overload.ttft_p99_ms("B"),
                "b_p99_overload_over_idle": overload.ttft_p99_ms("B") / idle.ttft_p99_ms("B"),
                "b_served_share_of_demand": len(overload.completed("B"))
                / max(1, sum(overload.codes("B").values())),
                "backlogged_goodput_over_capacity": backlogged.tokens_per_s() / capacity,
                "jain_backlogged": jain(
                    [backlogged.tokens_per_s("A"), backlogged.tokens_per_s("B")]
                ),
                "a_tokens_per_s_backlogged": backlogged.tokens_per_s("A"),
                "b_tokens_per_s_backlogged": backlogged.tokens_per_s("B"),
                # The machine's run queue as the round ends: above its cores,
                # other work competed with the mesh for CPU in that round.
                "load_average_1m": os.getloadavg()[0],
                **idle.breakdown("B", "b_idle"),
                **overload.breakdown("B", "b_overload"),
                **idle.cpu_use("b_idle"),
                **overload.cpu_use("overload"),
            }
            for key, value in row.items():
                rows.setdefault(key, []).append(value)
            for phase in ("overload", "backlogged"):
                for tenant in ("A", "B"):
                    shed_totals[tenant].update(
                        {f"{phase}:{code}": n for code, n in results[phase].codes(tenant).items()}
                    )
            last = results
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
    for phase in ("overload", "backlogged"):
        chart(last[phase], phase, last[phase].window[0] - args.warmup_s, name)

    table = {key: summary(values) for key, values in rows.items()}
    from_profile = profile_capacity(args)
    lines = [replica_flags.describe(args) + f", {args.tokens} tokens a request"]
    if from_profile is not None:
        lines.append(f"decode capacity from the profile: {from_profile:,.0f} tokens/s")
    lines += [f"{'measure':<42} {'median [min-max] over rounds':>36}", "-" * 79]
    for key, cell in table.items():
        lines.append(
            f"{key:<42} " + f"{cell['median']:.3f} [{cell['min']:.3f}-{cell['max']:.3f}]".rjust(36)
        )
    lines += [
        "",
        "requests by outcome (all rounds; shed = RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED "
        "before any token, (mid-stream) = cut after tokens had streamed):",
    ]
    for tenant, counts in shed_totals.items():
        lines.append(
            f"  tenant {tenant}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        )
    lines += [
        "",
        "targets: goodput_over_capacity >= 0.95, b_p99_overload_over_idle <= 2,"
        " jain_backlogged >= 0.95",
    ]
    write_results(
        name, "\n".join(lines), rounds=args.rounds, seconds=args.seconds,
        tokens_per_request=args.tokens, warmup_s=args.warmup_s, summary=table, raw=rows,
        outcomes={t: dict(c) for t, c in shed_totals.items()},
        charts=[f"{name}_{p}.png" for p in ("overload", "backlogged")],
        router_flags=args.router_flags, engine=args.engine, replicas=args.replicas,
        max_num_seqs=args.max_num_seqs,
        sim_profile=args.sim_profile if args.engine == "sim" else None,
        sim_messages_per_s=args.sim_messages_per_s if args.engine == "sim" else None,
        profile_capacity_tokens_per_s=from_profile,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    # None: the engine's own default (MAX_NUM_SEQS or SIM_MAX_NUM_SEQS).
    replica_flags.add_flags(parser, replicas=2, max_num_seqs=None)
    parser.add_argument("--tokens", type=int, default=None, help="tokens a request asks for")
    parser.add_argument("--warmup-s", type=float, default=None, help="of each phase, not counted")
    parser.add_argument("--router-flags", default="", help="extra flags for the router")
    parser.add_argument("--tag", default="", help="appended to the results' name")
    run_on_uvloop(main_async, parser)


if __name__ == "__main__":
    main()
