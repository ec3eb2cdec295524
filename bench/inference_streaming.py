"""Streaming throughput and latency of the inference service, side by side:

  (a) vLLM AsyncLLM called in-process (the ceiling),
  (b) this project's inference service over gRPC on loopback,
  (c) vLLM's own OpenAI-compatible HTTP server (`vllm serve`), streaming SSE,

on the same tiny model, at 1, 16 and 64 concurrent streams of 128 tokens.
A cell with fewer than 8 streams runs waves back to back (8 streams one
after another at concurrency 1), so its TTFT is a median, not one sample.
Beside them, the gRPC transport floor: the first message of a no-op gRPC
stream at the same concurrency (bench.transport_floor).
The systems take turns within each round (their order rotates), every round
repeats every cell, and each cell is reported as the median over rounds with
its range: the CPU engine starves other processes unevenly.

    .venv/bin/python -m bench.inference_streaming [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.inference.settings import InferenceSettings, cpu_engine_environment

for _key, _value in cpu_engine_environment().items():
    os.environ.setdefault(_key, _value)

from bench.cli import cells_parser, run_on_uvloop  # noqa: E402
from bench.stats import in_waves, percentile, summary, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KV_CACHE_BYTES = 512 * 1024 * 1024
MAX_NUM_SEQS = 64
TOKENS = 128
PROMPT = "The history of the lighthouse keeper's daughter, told in the old way, begins"


@dataclass
class StreamTrace:
    """Arrival times of one stream's chunks and the tokens in each."""

    start: float
    chunks: list[tuple[float, int]] = field(default_factory=list)

    def add(self, tokens: int) -> None:
        if tokens:
            self.chunks.append((time.perf_counter(), tokens))

    @property
    def tokens(self) -> int:
        return sum(n for _, n in self.chunks)

    def ttft(self) -> float:
        return self.chunks[0][0] - self.start

    def inter_token(self) -> list[float]:
        """Each token after the first gets its share of the gap before its chunk."""
        gaps: list[float] = []
        for (prev, _), (now, n) in zip(self.chunks, self.chunks[1:], strict=False):
            gaps.extend([(now - prev) / n] * n)
        return gaps


Stream = Callable[[int], Awaitable[StreamTrace]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# (a) ---------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def in_process(model: Path) -> AsyncIterator[Stream]:
    from vllm import SamplingParams
    from vllm.inputs import tokens_input
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from services.inference.vllm_engine import engine_args

    settings = InferenceSettings(
        model=str(model),
        kv_cache_memory_bytes=KV_CACHE_BYTES,
        enforce_eager=True,
        max_num_seqs=MAX_NUM_SEQS,
    )
    # Held in a list so the reference can be dropped after shutdown (AsyncLLM's
    # destructor fails at interpreter exit otherwise).
    held = [AsyncLLM.from_engine_args(engine_args(settings))]
    tokenizer = held[0].get_tokenizer()
    counter = iter(range(10**9))

    async def stream(i: int) -> StreamTrace:
        params = SamplingParams(
            max_tokens=TOKENS,
            ignore_eos=True,
            temperature=0.0,
            output_kind=RequestOutputKind.DELTA,
        )
        trace = StreamTrace(time.perf_counter())
        # Tokenized per request, as the servers (b) and (c) must, and handed
        # over as rendered token input, exactly as (b) does.
        prompt_ids = tokenizer.encode(PROMPT, add_special_tokens=False)
        async for out in held[0].generate(tokens_input(prompt_ids), params, f"a-{next(counter)}"):
            trace.add(len(out.outputs[0].token_ids))
        return trace

    try:
        yield stream
    finally:
        held[0].shutdown()
        held.clear()


def _spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


# (b) ---------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def grpc_service(
    model: Path, log_dir: Path, messages_per_s: float | None = None
) -> AsyncIterator[Stream]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from maas.v1 import generation_pb2, inference_pb2, inference_pb2_grpc

    port = free_port()
    pacing = ["--stream-messages-per-s", str(messages_per_s)] if messages_per_s is not None else []
    process = _spawn(
        [
            "-m", "services.inference", "--model", str(model), "--port", str(port),
            "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--enforce-eager",
            "--max-num-seqs", str(MAX_NUM_SEQS),
            *pacing,
        ],
        log_dir / "grpc_service.log",
    )  # fmt: skip
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        async for update in health.Watch(
            health_pb2.HealthCheckRequest(service="maas.v1.Inference"), wait_for_ready=True
        ):
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                break
        stub = inference_pb2_grpc.InferenceStub(channel)
        name = (await stub.GetModelInfo(inference_pb2.GetModelInfoRequest())).model.name
        request = inference_pb2.InferenceGenerateRequest(
            request=generation_pb2.GenerateRequest(
                model=name, prompt=PROMPT, max_tokens=TOKENS, ignore_eos=True, temperature=0.0
            )
        )

        async def stream(i: int) -> StreamTrace:
            trace = StreamTrace(time.perf_counter())
            async for chunk in stub.Generate(request):
                trace.add(len(chunk.token_ids))
            return trace

        yield stream
    finally:
        await channel.close()
        _stop(process)


# (c) ---------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def vllm_http(model: Path, log_dir: Path) -> AsyncIterator[Stream]:
    import aiohttp

    port = free_port()
    process = _spawn(
        [
            "-m", "bench.vllm_serve", "serve", str(model), "--port", str(port),
            "--host", "127.0.0.1", "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
            "--enforce-eager", "--max-num-seqs", str(MAX_NUM_SEQS),
            "--disable-uvicorn-access-log",
        ],
        log_dir / "vllm_serve.log",
        # Pooled connections stay open between cells, as they do for a steady
        # client; at uvicorn's 5 s default a reused one can be reset mid-request.
        env={"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "600"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    connector = aiohttp.TCPConnector(limit=0)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600))
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited; see {log_dir / 'vllm_serve.log'}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/health") as reply:
                    if reply.status == 200:
                        break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError("vllm serve did not become healthy")
        async with session.get(f"{base}/v1/models") as reply:
            name = (await reply.json())["data"][0]["id"]
        body = {
            "model": name,
            "prompt": PROMPT,
            "max_tokens": TOKENS,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            # Token ids per chunk, so tokens are counted as they arrive.
            "return_token_ids": True,
        }

        async def stream(i: int) -> StreamTrace:
            trace = StreamTrace(time.perf_counter())
            async with session.post(f"{base}/v1/completions", json=body) as reply:
                reply.raise_for_status()
                async for raw in reply.content:
                    line = raw.strip()
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for choice in chunk.get("choices", []):
                        ids = choice.get("token_ids")
                        trace.add(len(ids) if ids is not None else 1)
            return trace

        yield stream
    finally:
        await session.close()
        _stop(process)


# -------------------------------------------------------------------------------
async def run_cell(stream: Stream, concurrency: int, min_streams: int = 1) -> dict[str, float]:
    async def wave(n: int) -> list[StreamTrace]:
        return await asyncio.gather(*(stream(i) for i in range(n)))

    start = time.perf_counter()
    traces = await in_waves(wave, concurrency, min_streams)
    wall = time.perf_counter() - start
    tokens = sum(t.tokens for t in traces)
    if tokens != len(traces) * TOKENS:
        raise RuntimeError(f"expected {len(traces) * TOKENS} tokens, got {tokens}")
    ttfts = [t.ttft() for t in traces]
    itls = [gap for t in traces for gap in t.inter_token()]
    chunks = sum(len(t.chunks) for t in traces)
    return {
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
        "itl_p50_ms": percentile(itls, 50) * 1e3,
        "itl_p99_ms": percentile(itls, 99) * 1e3,
        "tokens_per_message": tokens / chunks,
    }


# The transport floor --------------------------------------------------------------
FirstMessages = Callable[[int], Awaitable[list[float]]]


@contextlib.asynccontextmanager
async def grpc_floor(log_dir: Path) -> AsyncIterator[FirstMessages]:
    """A no-op gRPC server (bench.transport_floor): the seconds to the first
    message of `n` concurrent calls are what the transport alone adds."""
    import grpc

    from bench.transport_floor import GENERATE, ready

    port = free_port()
    process = _spawn(
        ["-m", "bench.transport_floor", "noop", "--port", str(port)], log_dir / "grpc_floor.log"
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await ready(f"127.0.0.1:{port}")
        call: Any = channel.unary_stream(GENERATE)

        async def first(_: int) -> float:
            start = time.perf_counter()
            async for _chunk in call(b""):
                return time.perf_counter() - start
            raise RuntimeError("the no-op server sent nothing")

        async def first_messages(n: int) -> list[float]:
            return list(await asyncio.gather(*(first(i) for i in range(n))))

        yield first_messages
    finally:
        await channel.close()
        _stop(process)


async def floor_cell(first_messages: FirstMessages, concurrency: int, min_streams: int) -> float:
    """Median seconds to the first message of a no-op stream, waves as in `run_cell`."""
    return percentile(await in_waves(first_messages, concurrency, min_streams), 50)


SYSTEMS = ("a_asyncllm_in_process", "b_maas_grpc", "c_vllm_openai_http")
METRICS = ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")


def fmt(cell: dict[str, float]) -> str:
    return f"{cell['median']:.1f} [{cell['min']:.1f}-{cell['max']:.1f}]"


async def main_async(args: argparse.Namespace) -> None:
    from local_models.tiny_llama import build_tiny_model

    model = build_tiny_model(REPO / ".maas" / "models" / "tiny-llama")
    log_dir = REPO / ".maas" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    raw: dict[str, dict[int, list[dict[str, float]]]] = {
        s: {c: [] for c in concurrencies} for s in SYSTEMS
    }
    floor_raw: dict[int, list[float]] = {c: [] for c in concurrencies}
    async with contextlib.AsyncExitStack() as stack:
        print("starting the three systems (each loads the model) ...", flush=True)
        streams = {
            SYSTEMS[0]: await stack.enter_async_context(in_process(model)),
            SYSTEMS[1]: await stack.enter_async_context(
                grpc_service(model, log_dir, args.grpc_messages_per_s)
            ),
            SYSTEMS[2]: await stack.enter_async_context(vllm_http(model, log_dir)),
        }
        floor = await stack.enter_async_context(grpc_floor(log_dir))
        for name, stream in streams.items():  # warm-up: first requests pay one-off costs
            await run_cell(stream, 4)
            print(f"  {name} ready", flush=True)
        await floor_cell(floor, 16, 16)
        for round_ in range(args.rounds):
            for c in concurrencies:
                order = SYSTEMS[round_ % 3 :] + SYSTEMS[: round_ % 3]
                for name in order:
                    raw[name][c].append(await run_cell(streams[name], c, args.min_streams))
                floor_raw[c].append(await floor_cell(floor, c, args.min_streams) * 1e3)
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)

    table: dict[str, dict[int, dict[str, dict[str, float]]]] = {
        s: {c: {m: summary([r[m] for r in raw[s][c]]) for m in (*METRICS, "tokens_per_message")}
            for c in concurrencies}
        for s in SYSTEMS
    }  # fmt: skip
    header = f"{'system':<22} {'streams':>7} " + " ".join(f"{m:>26}" for m in METRICS)
    lines = [header, "-" * len(header)]
    for c in concurrencies:
        for s in SYSTEMS:
            lines.append(
                f"{s:<22} {c:>7} " + " ".join(f"{fmt(table[s][c][m]):>26}" for m in METRICS)
            )
    lines.append("")
    lines.append("(b) vs (a) and (c), medians:")
    for c in concurrencies:
        a, b, h = ({m: v["median"] for m, v in table[s][c].items()} for s in SYSTEMS)
        lines.append(
            f"  {c:>2} streams: tokens/s b/a = {b['tokens_per_s'] / a['tokens_per_s']:.3f},"
            f" b/c = {b['tokens_per_s'] / h['tokens_per_s']:.3f};"
            f" TTFT p50 b-a = {b['ttft_p50_ms'] - a['ttft_p50_ms']:+.2f} ms,"
            f" b-c = {b['ttft_p50_ms'] - h['ttft_p50_ms']:+.2f} ms;"
            f" tokens/message in b = {b['tokens_per_message']:.2f}"
        )
    floors = {c: summary(floor_raw[c]) for c in concurrencies}
    lines.append("")
    lines.append(
        "gRPC transport floor: first message of a no-op gRPC stream (bench.transport_floor),"
    )
    lines.append("same concurrency, same rounds; no engine, no service code:")
    for c in concurrencies:
        lines.append(f"  {c:>2} streams: TTFT p50 {fmt(floors[c])} ms")
    write_results(
        "inference_streaming",
        "\n".join(lines),
        tokens_per_stream=TOKENS,
        rounds=args.rounds,
        min_streams_per_cell=args.min_streams,
        grpc_floor_ttft_p50_ms={str(c): v for c, v in floors.items()},
        summary={s: {str(c): v for c, v in cells.items()} for s, cells in table.items()},
        raw={s: {str(c): v for c, v in cells.items()} for s, cells in raw.items()},
    )


def main() -> None:
    parser = cells_parser(__doc__)
    parser.add_argument(
        "--grpc-messages-per-s",
        type=float,
        default=None,
        help="the gRPC service's stream message budget (default: its own setting)",
    )
    run_on_uvloop(main_async, parser)


if __name__ == "__main__":
    main()
