"""Prefix affinity against round robin: conversations that share prefixes
(a long system prompt each, then turns that resend the history) over
inference replicas with prefix caching on (two CPU-engine ones, or
`--engine sim --replicas 8` simulated GPU ones), through a router choosing
by prefix affinity and through one choosing in turn.

Both routers sit in front of the same replicas; every cell uses fresh
system prompts, so neither choice inherits the other's cache. The two take
turns within each round (the order alternates); cells are medians over
rounds with their range. Reported: the prefix-cache hit rate (cached prompt
tokens over all prompt tokens, from each answer's usage) and time to first
token.

    .venv/bin/python -m bench.router_affinity [--rounds 3]
    .venv/bin/python -m bench.router_affinity --engine sim --replicas 8
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from contextlib import AsyncExitStack

import grpc

from bench import mesh, replica_flags
from bench.cli import run_on_uvloop
from bench.stats import median_table, percentile, summary, write_results
from maas.v1 import router_pb2_grpc

CHOICES = ("affinity", "round_robin")
# Per replica, so the load on each replica is the same however many there
# are: with two, the 16 conversations, 8 at a time, of the CPU-engine runs.
CONVERSATIONS_PER_REPLICA = 8
CONCURRENT_PER_REPLICA = 4
TURNS = 4
ANSWER_TOKENS = 16
METRICS = ("hit_rate", "ttft_p50_ms", "ttft_p99_ms")


def system_prompt(rng: random.Random) -> str:
    words = " ".join(f"rule{rng.randrange(100_000)}" for _ in range(150))
    return f"You are the assistant of a lighthouse. Follow these rules: {words}."


async def run_cell(
    stub: router_pb2_grpc.RouterAsyncStub, model: str, rng: random.Random, replicas: int
) -> dict[str, float]:
    outcomes: list[mesh.Outcome] = []
    gate = asyncio.Semaphore(CONCURRENT_PER_REPLICA * replicas)

    async def conversation() -> None:
        history = [("system", system_prompt(rng))]
        async with gate:
            for turn in range(TURNS):
                history.append(("user", f"question {turn}: {rng.randrange(10**6)}?"))
                outcome = mesh.Outcome("t", time.perf_counter())
                request = mesh.router_request(model, messages=history, max_tokens=ANSWER_TOKENS)
                await mesh.stream(stub.Generate(request, timeout=60), outcome)
                if outcome.code != "OK":
                    raise RuntimeError(f"request failed: {outcome.code} {outcome.details}")
                outcomes.append(outcome)
                history.append(("assistant", f"answer {turn}"))

    await asyncio.gather(*(conversation() for _ in range(CONVERSATIONS_PER_REPLICA * replicas)))
    ttfts = [o.ttft for o in outcomes if o.ttft is not None]
    return {
        "hit_rate": sum(o.cached_tokens for o in outcomes)
        / max(1, sum(o.prompt_tokens for o in outcomes)),
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
    }


async def main_async(args: argparse.Namespace) -> None:
    raw: dict[str, list[dict[str, float]]] = {c: [] for c in CHOICES}
    rng = random.Random(11)
    async with AsyncExitStack() as stack:
        print(f"starting {replica_flags.describe(args)} and two routers ...", flush=True)
        replicas, model = await replica_flags.start(stack, args, "affinity")
        stubs = {}
        for choice in CHOICES:
            address = await stack.enter_async_context(
                mesh.router(replicas, f"affinity_router_{choice}", "--replica-choice", choice)
            )
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
            stubs[choice] = router_pb2_grpc.RouterStub(channel)
        for choice in CHOICES:  # warm-up
            await run_cell(stubs[choice], model, rng, args.replicas)
        for round_ in range(args.rounds):
            order = CHOICES if round_ % 2 == 0 else CHOICES[::-1]
            for choice in order:
                raw[choice].append(await run_cell(stubs[choice], model, rng, args.replicas))
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)

    table = {c: {m: summary([r[m] for r in raw[c]]) for m in METRICS} for c in CHOICES}
    lines = median_table(table, METRICS, "choice")
    lines.append(
        f"\n{CONVERSATIONS_PER_REPLICA * args.replicas} conversations x {TURNS} turns, "
        f"{CONCURRENT_PER_REPLICA * args.replicas} at a time, over {replica_flags.describe(args)}"
    )
    write_results(
        replica_flags.results_name("router_affinity", args), "\n".join(lines),
        rounds=args.rounds, summary=table, raw=raw, engine=args.engine, replicas=args.replicas,
        sim_profile=args.sim_profile if args.engine == "sim" else None,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    # 64: the inference service's own default batch, which the CPU-engine runs used.
    replica_flags.add_flags(parser, replicas=2, max_num_seqs=64)
    run_on_uvloop(main_async, parser)


if __name__ == "__main__":
    main()
