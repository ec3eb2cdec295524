"""What the router costs: the same load straight to one inference replica and
through the router in front of it, side by side in one run. A third path,
a bare pass-through proxy (bench.transport_floor: raw bytes forwarded, no
logic), shows what any Python gRPC hop costs on this machine.

At 1, 16 and 64 concurrent streams of 128 tokens, the paths take turns
within each round (the order rotates), every round repeats every cell,
and each cell is the median over rounds with its range. A cell with fewer
than 8 streams runs waves back to back, so its TTFT is not one sample.

    .venv/bin/python -m bench.router_overhead [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import grpc

from bench import mesh
from bench.cli import cells_parser, run_on_uvloop
from bench.stats import in_waves, percentile, summary, write_results
from maas.v1 import inference_pb2, inference_pb2_grpc, router_pb2_grpc

TOKENS = 128
PROMPT = "The history of the lighthouse keeper's daughter, told in the old way, begins"
PATHS = ("direct", "router", "bare_proxy")
METRICS = ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms")

Streams = Callable[[int], Awaitable[list[mesh.Outcome]]]


def streams_of(call: Callable[[], Any]) -> Streams:
    """`n` concurrent streams of the call, as their clients saw them."""

    async def streams(n: int) -> list[mesh.Outcome]:
        return await asyncio.gather(
            *(mesh.stream(call(), mesh.Outcome("t", time.perf_counter())) for _ in range(n))
        )

    return streams


async def run_cell(streams: Streams, concurrency: int, min_streams: int = 1) -> dict[str, float]:
    start = time.perf_counter()
    outcomes = await in_waves(streams, concurrency, min_streams)
    wall = time.perf_counter() - start
    bad = [o.code for o in outcomes if o.code != "OK" or o.tokens != TOKENS]
    if bad:
        raise RuntimeError(f"failed streams: {bad[:5]}")
    ttfts = [o.ttft for o in outcomes if o.ttft is not None]
    return {
        "tokens_per_s": sum(o.tokens for o in outcomes) / wall,
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
    }


async def main_async(args: argparse.Namespace) -> None:
    from local_models.tiny_llama import build_tiny_model

    model_dir = build_tiny_model(mesh.REPO / ".maas" / "models" / "tiny-llama")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    raw: dict[str, dict[int, list[dict[str, float]]]] = {
        p: {c: [] for c in concurrencies} for p in PATHS
    }
    async with AsyncExitStack() as stack:
        print("starting an inference replica and a router ...", flush=True)
        replica = await stack.enter_async_context(mesh.inference(model_dir, "overhead_replica"))
        router = await stack.enter_async_context(mesh.router([replica], "overhead_router"))
        model = await mesh.model_name(replica)
        proxy = await stack.enter_async_context(mesh.bare_proxy(replica, "overhead_proxy"))
        direct_ch = await stack.enter_async_context(grpc.aio.insecure_channel(replica))
        proxy_ch = await stack.enter_async_context(grpc.aio.insecure_channel(proxy))
        proxy_stub = inference_pb2_grpc.InferenceStub(proxy_ch)
        router_ch = await stack.enter_async_context(grpc.aio.insecure_channel(router))
        direct_stub = inference_pb2_grpc.InferenceStub(direct_ch)
        router_stub = router_pb2_grpc.RouterStub(router_ch)
        routed = mesh.router_request(model, prompt=PROMPT, max_tokens=TOKENS)
        straight = inference_pb2.InferenceGenerateRequest(request=routed.request)

        paths: dict[str, Streams] = {
            "direct": streams_of(lambda: direct_stub.Generate(straight)),
            "router": streams_of(lambda: router_stub.Generate(routed)),
            "bare_proxy": streams_of(lambda: proxy_stub.Generate(straight)),
        }
        for name, streams in paths.items():  # warm-up (and the router's limiter)
            for c in concurrencies:
                await run_cell(streams, c)
            print(f"  {name} ready", flush=True)
        for round_ in range(args.rounds):
            for c in concurrencies:
                order = PATHS[round_ % 3 :] + PATHS[: round_ % 3]
                for name in order:
                    raw[name][c].append(await run_cell(paths[name], c, args.min_streams))
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)

    table = {
        p: {c: {m: summary([r[m] for r in raw[p][c]]) for m in METRICS} for c in concurrencies}
        for p in PATHS
    }
    header = f"{'path':<10} {'streams':>7} " + " ".join(f"{m:>26}" for m in METRICS)
    lines = [header, "-" * len(header)]
    for c in concurrencies:
        for p in PATHS:
            cells = (table[p][c][m] for m in METRICS)
            lines.append(
                f"{p:<10} {c:>7} "
                + " ".join(
                    f"{x['median']:.1f} [{x['min']:.1f}-{x['max']:.1f}]".rjust(26) for x in cells
                )
            )
    lines += [
        "",
        "router vs direct, medians (targets: TTFT p50 +1 ms at most, tokens/s 0.95 at least):",
    ]
    for c in concurrencies:
        d = {m: table["direct"][c][m]["median"] for m in METRICS}
        r = {m: table["router"][c][m]["median"] for m in METRICS}
        x = {m: table["bare_proxy"][c][m]["median"] for m in METRICS}
        ratio = r["tokens_per_s"] / d["tokens_per_s"]
        lines.append(
            f"  {c:>2} streams: tokens/s router/direct = {ratio:.3f};"
            f" TTFT p50 router-direct = {r['ttft_p50_ms'] - d['ttft_p50_ms']:+.2f} ms"
            f" | bare proxy: tokens/s {x['tokens_per_s'] / d['tokens_per_s']:.3f},"
            f" TTFT {x['ttft_p50_ms'] - d['ttft_p50_ms']:+.2f} ms"
        )
    write_results(
        "router_overhead",
        "\n".join(lines),
        rounds=args.rounds,
        min_streams_per_cell=args.min_streams,
        summary=table,
        raw=raw,
    )


def main() -> None:
    parser = cells_parser(__doc__)
    run_on_uvloop(main_async, parser)


if __name__ == "__main__":
    main()
