"""Processes for the router benchmarks: inference replicas and a router,
each its own process as in production, and a client that streams through
them recording what a user sees."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.inference_streaming import KV_CACHE_BYTES, free_port
from maas.v1 import auth_pb2, generation_pb2, inference_pb2, inference_pb2_grpc, router_pb2
from services.inference.settings import cpu_engine_environment

REPO = Path(__file__).resolve().parent.parent
LOG_DIR = REPO / ".maas" / "bench"
# The process serving each address a `process` block started here, while it
# runs: benchmarks read its CPU time and memory from /proc.
PIDS: dict[str, int] = {}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in cpu_engine_environment().items():
        env.setdefault(key, value)
    env.setdefault("MAAS_INFERENCE_TELEMETRY__LOG_LEVEL", "WARNING")
    env.setdefault("MAAS_ROUTER_TELEMETRY__LOG_LEVEL", "WARNING")
    env.setdefault("MAAS_GATEWAY_TELEMETRY__LOG_LEVEL", "WARNING")
    env.setdefault("MAAS_AUTH_TELEMETRY__LOG_LEVEL", "WARNING")
    env.setdefault("MAAS_ANOMALY_TELEMETRY__LOG_LEVEL", "WARNING")
    return env


async def _serving(address: str, service: str, timeout_s: float = 300) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        async for update in health.Watch(request, wait_for_ready=True, timeout=timeout_s):
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                return


async def _started(proc: subprocess.Popen[bytes], ready: Coroutine[Any, Any, None]) -> None:
    """Awaits `ready`, or raises as soon as `proc` exits before it (a bad flag, a taken port)."""
    waiting = asyncio.ensure_future(ready)
    while not waiting.done():
        if proc.poll() is not None:
            waiting.cancel()
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}; see its log")
        await asyncio.wait({waiting}, timeout=0.2)
    waiting.result()


@contextlib.asynccontextmanager
async def process(
    args: list[str], log_name: str, address: str, service: str | None, *, cwd: Path = REPO
) -> AsyncIterator[str]:
    """Runs `python ARGS` in `cwd` (another checkout runs its own code) until
    the block ends, once its health reports `service` SERVING (`None`: once
    it accepts connections, for servers without a health service)."""
    from bench.transport_floor import ready

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / log_name).open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=_env()
        )
    PIDS[address] = proc.pid
    try:
        await _started(proc, ready(address) if service is None else _serving(address, service))
        yield address
    finally:
        PIDS.pop(address, None)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def auth(state: Path, admin_token: str, name: str) -> contextlib.AbstractAsyncContextManager[str]:
    """auth on SQLite under `state`, with `admin_token` as its operator token."""
    port = free_port()
    args = [
        "-m", "services.auth", "--port", str(port),
        "--database-path", str(state / "auth.db"),
        # KEY=VALUE: a token may begin with "-", which would read as a flag.
        f"--admin-token={admin_token}", f"--key-pepper={secrets.token_urlsafe(32)}",
    ]  # fmt: skip
    return process(args, f"{name}.log", f"127.0.0.1:{port}", "maas.v1.Auth")


def inference(
    model: Path | str,
    name: str,
    max_num_seqs: int = 64,
    *,
    engine: str = "vllm",
    sim_profile: str | None = None,
) -> contextlib.AbstractAsyncContextManager[str]:
    """One replica: the CPU engine on the model directory `model`, or with
    `engine="sim"` the simulated engine serving `model` as a name under
    `sim_profile` (the profile's own batch and KV sizes unless `max_num_seqs`)."""
    port = free_port()
    args = ["-m", "services.inference", "--model", str(model), "--port", str(port)]
    if engine == "sim":
        args += ["--engine", "sim", "--max-num-seqs", str(max_num_seqs)]
        if sim_profile:
            args += ["--sim-profile", sim_profile]
    else:
        args += [
            "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--enforce-eager",
            "--max-num-seqs", str(max_num_seqs),
        ]  # fmt: skip
    return process(args, f"{name}.log", f"127.0.0.1:{port}", "maas.v1.Inference")


def router(
    replicas: list[str], name: str, *extra: str
) -> contextlib.AbstractAsyncContextManager[str]:
    port = free_port()
    args = [
        "-m",
        "services.router",
        "--port",
        str(port),
        "--replicas",
        json.dumps(replicas),
        *extra,
    ]
    return process(args, f"{name}.log", f"127.0.0.1:{port}", "maas.v1.Router")


def bare_proxy(upstream: str, name: str) -> contextlib.AbstractAsyncContextManager[str]:
    """A pass-through hop with no logic in front of `upstream` (bench.transport_floor)."""
    port = free_port()
    args = ["-m", "bench.transport_floor", "proxy", "--port", str(port), "--upstream", upstream]
    return process(args, f"{name}.log", f"127.0.0.1:{port}", None)


def anomaly(name: str) -> contextlib.AbstractAsyncContextManager[str]:
    port = free_port()
    args = ["-m", "services.anomaly", "--port", str(port)]
    return process(args, f"{name}.log", f"127.0.0.1:{port}", "maas.v1.Anomaly")


def gateway(
    state: Path, router: str, auth: str, anomaly: str, name: str, *extra: str, cwd: Path = REPO
) -> contextlib.AbstractAsyncContextManager[str]:
    """The public gateway (gRPC face only) over `router`, with its outbox
    under `state`; `cwd`: the checkout whose gateway runs."""
    port = free_port()
    args = [
        "-m", "gateway", "--port", str(port), "--http-port", "null",
        "--router-address", router, "--auth-address", auth, "--anomaly-address", anomaly,
        "--usage-outbox-path", str(state / f"{name}-outbox.db"), *extra,
    ]  # fmt: skip
    return process(args, f"{name}.log", f"127.0.0.1:{port}", "maas.v1.Gateway", cwd=cwd)


@functools.cache
def gateway_has_routing() -> bool:
    """Whether this branch's gateway takes `--routing proxy|direct`."""
    usage = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, cwd=REPO
    ).stdout
    return "--routing" in usage


def gateway_routings(wanted: list[str]) -> list[str]:
    """Those of `wanted` routing designs this branch's gateway has: one
    without a `--routing` flag has only "proxy" (the router on the token path)."""
    return wanted if gateway_has_routing() else [r for r in wanted if r == "proxy"]


async def model_name(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as ch:
        info = await inference_pb2_grpc.InferenceStub(ch).GetModelInfo(
            inference_pb2.GetModelInfoRequest()
        )
        return info.model.name


@dataclass
class Outcome:
    """One request as its client saw it."""

    tenant: str
    start: float
    first_token: float | None = None
    end: float | None = None
    tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    # The engine's queueing before the first token, as its chunk told it.
    queued_s: float | None = None
    code: str = "OK"
    details: str = ""

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start


def router_request(
    model: str,
    *,
    prompt: str | None = None,
    messages: list[tuple[str, str]] | None = None,
    max_tokens: int,
    tenant: str = "bench",
    priority: auth_pb2.Priority = auth_pb2.PRIORITY_DEFAULT,
) -> router_pb2.RouterGenerateRequest:
    request = generation_pb2.GenerateRequest(
        model=model, max_tokens=max_tokens, ignore_eos=True, temperature=0.0
    )
    if messages is not None:
        request.messages.messages.extend(
            generation_pb2.ChatMessage(role=role, content=content) for role, content in messages
        )
    else:
        request.prompt = prompt or ""
    return router_pb2.RouterGenerateRequest(
        request=request,
        context=router_pb2.RequestContext(tenant_id=tenant, priority=priority),
    )


async def stream(call: grpc.aio.UnaryStreamCall, outcome: Outcome) -> Outcome:  # type: ignore[type-arg]
    try:
        async for chunk in call:
            now = time.perf_counter()
            n = len(chunk.token_ids)
            if n and outcome.first_token is None:
                outcome.first_token = now
                outcome.queued_s = chunk.queued_s
            outcome.tokens += n
            outcome.prompt_tokens = chunk.usage.prompt_tokens
            outcome.cached_tokens = chunk.usage.cached_tokens
    except grpc.aio.AioRpcError as err:
        outcome.code = err.code().name
        outcome.details = err.details() or ""
    outcome.end = time.perf_counter()
    return outcome


async def settle(seconds: float = 1.0) -> None:
    """Lets the previous cell's stragglers and the CPU calm down."""
    await asyncio.sleep(seconds)
