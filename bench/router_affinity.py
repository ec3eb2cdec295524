"""Prefix affinity against round robin: conversations that share prefixes
(a long system prompt each, then turns that resend the history) over two
inference replicas with prefix caching on, through a router choosing by
prefix affinity and through one choosing in turn.

Both routers sit in front of the same two replicas; every cell uses fresh
system prompts, so neither choice inherits the other's cache. The two take
turns within each round (the order alternates); cells are medians over
rounds with their range. Reported: the prefix-cache hit rate (cached prompt
tokens over all prompt tokens, from each answer's usage) and time to first
token.

    .venv/bin/python -m bench.router_affinity [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from contextlib import AsyncExitStack

import grpc

from bench import mesh
from bench.cli import run_on_uvloop
from bench.stats import percentile, summary, write_results
from maas.v1 import router_pb2_grpc

CHOICES = ("affinity", "round_robin")
CONVERSATIONS = 16
TURNS = 4
CONCURRENT = 8
ANSWER_TOKENS = 16
METRICS = ("hit_rate", "ttft_p50_ms", "ttft_p99_ms")


def system_prompt(rng: random.Random) -> str:
    words = " ".join(f"rule{rng.randrange(100_000)}" for _ in range(150))
    return f"You are the assistant of a lighthouse. Follow these rules: {words}."


async def run_cell(
    stub: router_pb2_grpc.RouterAsyncStub, model: str, rng: random.Random
) -> dict[str, float]:
    outcomes: list[mesh.Outcome] = []
    gate = asyncio.Semaphore(CONCURRENT)

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

    await asyncio.gather(*(conversation() for _ in range(CONVERSATIONS)))
    ttfts = [o.ttft for o in outcomes if o.ttft is not None]
    return {
        "hit_rate": sum(o.cached_tokens for o in outcomes)
        / max(1, sum(o.prompt_tokens for o in outcomes)),
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
    }


async def main_async(args: argparse.Namespace) -> None:
    from local_models.tiny_llama import build_tiny_model

    model_dir = build_tiny_model(mesh.REPO / ".maas" / "models" / "tiny-llama")
    raw: dict[str, list[dict[str, float]]] = {c: [] for c in CHOICES}
    rng = random.Random(11)
    async with AsyncExitStack() as stack:
        print("starting two inference replicas and two routers ...", flush=True)
        replicas = [
            await stack.enter_async_context(mesh.inference(model_dir, f"affinity_replica{i}"))
            for i in range(2)
        ]
        stubs = {}
        for choice in CHOICES:
            address = await stack.enter_async_context(
                mesh.router(replicas, f"affinity_router_{choice}", "--replica-choice", choice)
            )
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
            stubs[choice] = router_pb2_grpc.RouterStub(channel)
        model = await mesh.model_name(replicas[0])
        for choice in CHOICES:  # warm-up
            await run_cell(stubs[choice], model, rng)
        for round_ in range(args.rounds):
            order = CHOICES if round_ % 2 == 0 else CHOICES[::-1]
            for choice in order:
                raw[choice].append(await run_cell(stubs[choice], model, rng))
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)

    table = {c: {m: summary([r[m] for r in raw[c]]) for m in METRICS} for c in CHOICES}
    header = f"{'choice':<12} " + " ".join(f"{m:>24}" for m in METRICS)
    lines = [header, "-" * len(header)]
    for c in CHOICES:
        cells = [table[c][m] for m in METRICS]
        lines.append(
            f"{c:<12} "
            + " ".join(
                f"{x['median']:.3f} [{x['min']:.3f}-{x['max']:.3f}]".rjust(24) for x in cells
            )
        )
    lines.append(
        f"\n{CONVERSATIONS} conversations x {TURNS} turns, {CONCURRENT} at a time, over 2 replicas"
    )
    write_results("router_affinity", "\n".join(lines), rounds=args.rounds, summary=table, raw=raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    run_on_uvloop(main_async, parser)


if __name__ == "__main__":
    main()
