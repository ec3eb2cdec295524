"""Adapter-aware routing against round robin, for tenants' private adapters
on replicas that hold few of them at once.

The whole mesh in one process (services/mesh.py: real auth with its adapter
registry, router, anomaly and gateway) over two simulated replicas of a
GPU-class model, each with one adapter slot and a simulated adapter load
of `sim_adapter_load_s`; replicas fetch adapters from the registry. Three
tenants each register an adapter in the registry (tiny PEFT files), then a
seeded stream of requests chooses among them, one adapter hot (half
the requests), the other two a quarter each. Each tenant uploads its
adapter through the gateway (Gateway.CreateAdapter) and asks for it by name
(Gateway.Generate), as a client does. One mesh routes with adapter
affinity, the other (identical) in turn with adapters ignored; they take
turns within each round (the order alternates), and cells are medians over
rounds with their range.

A request refused (UNAVAILABLE: every slot busy where the router sent it,
on both tries) is sent again by the client after a short pause, as clients
retry UNAVAILABLE, so every request is answered in both modes. Reported per
cell: adapter loads per request (from the replicas' load reports: each
load is a miss), refusals per request, and time to first token from each
request's first try.

    .venv/bin/python -m bench.adapter_routing [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench import mesh as bench_mesh
from bench.cli import run_on_uvloop
from bench.stats import median_table, percentile, summary, write_results
from local_models.tiny_llama import build_tiny_adapter
from maas.v1 import (
    adapter_pb2,
    auth_pb2,
    auth_pb2_grpc,
    gateway_pb2_grpc,
    generation_pb2,
    router_pb2,
    router_pb2_grpc,
)
from observability import setup
from observability.channels import SERVICE_TOKEN_METADATA_KEY
from observability.settings import TelemetrySettings
from services.inference.server import serving as serving_inference
from services.inference.settings import InferenceSettings
from services.mesh import MeshOptions, RunningMesh, running_mesh

MODES = ("adapter_aware", "round_robin")
MODEL = "llama-3.1-8b"
PROFILE = "llama-3.1-8b-h100"
ADAPTERS = ("support-bot", "legal-summaries", "sql-helper")
# One hot adapter, two cooler ones: the skew of a few active tenants.
WEIGHTS = (0.5, 0.25, 0.25)
REQUESTS = 96
CONCURRENT = 6
ANSWER_TOKENS = 32
METRICS = ("loads_per_request", "refusals_per_request", "ttft_p50_ms", "ttft_p99_ms")
# A client's retries of a refused request: a short pause, as a client backs
# off, and enough tries that none gives up.
RETRY_PAUSE_S = 0.05
MAX_TRIES = 100
# Weights upload in chunks of at most 1 MiB (adapter.proto).
CHUNK = 1 << 20


@dataclass
class Cell:
    gateway: gateway_pb2_grpc.GatewayAsyncStub
    router: router_pb2_grpc.RouterAsyncStub
    service_token: str
    # Adapter name -> its tenant's API key.
    keys: dict[str, str]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((SERVICE_TOKEN_METADATA_KEY, self.service_token),)


async def adapter_loads(cell: Cell) -> int:
    listed = await cell.router.ListReplicas(
        router_pb2.ListReplicasRequest(), metadata=cell.metadata
    )
    return sum(r.load.adapter_loads for r in listed.replicas)


async def upload_adapter(
    gateway: gateway_pb2_grpc.GatewayAsyncStub, api_key: str, name: str, seed: int, files: Path
) -> None:
    """The tenant uploads its adapter (tiny PEFT files) through the gateway."""
    folder = build_tiny_adapter(files / name, rank=8, seed=seed)
    config = (folder / "adapter_config.json").read_bytes()
    weights = (folder / "adapter_model.safetensors").read_bytes()
    parts = [
        adapter_pb2.AdapterUpload(
            spec=adapter_pb2.AdapterSpec(name=name, base_model=MODEL, config_json=config)
        ),
        *(
            adapter_pb2.AdapterUpload(weights_chunk=weights[i : i + CHUNK])
            for i in range(0, len(weights), CHUNK)
        ),
    ]
    await gateway.CreateAdapter(iter(parts), metadata=(("authorization", f"Bearer {api_key}"),))


async def run_cell(cell: Cell, rng: random.Random) -> dict[str, float]:
    names = rng.choices(ADAPTERS, WEIGHTS, k=REQUESTS)
    outcomes: list[bench_mesh.Outcome] = []
    gate = asyncio.Semaphore(CONCURRENT)
    refusals = [0]
    loads_before = await adapter_loads(cell)

    async def one(i: int, name: str) -> None:
        async with gate:
            outcome = bench_mesh.Outcome("bench", time.perf_counter())
            request = generation_pb2.GenerateRequest(
                model=name,
                prompt=f"request {i}: {rng.randrange(10**6)}",
                max_tokens=ANSWER_TOKENS,
                ignore_eos=True,
            )
            key = (("authorization", f"Bearer {cell.keys[name]}"),)
            # A refused request is sent again, as clients retry UNAVAILABLE:
            # every request is answered, and its time to first token counts
            # from its first try.
            for attempt in range(MAX_TRIES):
                if attempt:
                    await asyncio.sleep(RETRY_PAUSE_S)
                    refusals[0] += 1
                outcome.code, outcome.details = "OK", ""
                call = cell.gateway.Generate(request, metadata=key, timeout=60)
                await bench_mesh.stream(call, outcome)
                if outcome.code != "UNAVAILABLE":
                    break
            outcomes.append(outcome)

    await asyncio.gather(*(one(i, name) for i, name in enumerate(names)))
    # The load reports trail the last answer by an engine step at most.
    await asyncio.sleep(0.2)
    loads = await adapter_loads(cell) - loads_before
    failed = [o for o in outcomes if o.code != "OK"]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[0].code} {failed[0].details}")
    ttfts = [o.ttft for o in outcomes if o.ttft is not None]
    return {
        "loads_per_request": loads / REQUESTS,
        "refusals_per_request": refusals[0] / REQUESTS,
        "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
        "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
    }


@asynccontextmanager
async def mesh_for(mode: str, state: Path, load_s: float, idle_s: float) -> AsyncIterator[Cell]:
    """A mesh routing as `mode` says, with a second simulated replica
    registered with its router, and a tenant holding the three adapters."""
    token = secrets.token_urlsafe(32)
    inference = {
        "engine": "sim",
        "sim_profile": PROFILE,
        "adapter_slots": 1,
        "sim_adapter_load_s": load_s,
    }
    aware = mode == "adapter_aware"
    options = MeshOptions(
        state=state,
        model=MODEL,
        service_token=token,
        overrides={
            "inference": inference,
            "router": {
                "adapter_affinity": aware,
                "adapter_idle_s": idle_s,
                "replica_choice": "affinity" if aware else "round_robin",
            },
        },
    )
    async with AsyncExitStack() as stack:
        running: RunningMesh = await stack.enter_async_context(running_mesh(options))
        second_settings = running.settings["inference"].model_copy(update={"port": 0})
        assert isinstance(second_settings, InferenceSettings)
        telemetry = setup("inference-2", TelemetrySettings())
        stack.callback(telemetry.shutdown)
        second = await stack.enter_async_context(serving_inference(second_settings, telemetry))
        metadata = ((SERVICE_TOKEN_METADATA_KEY, token),)
        router_ch = await stack.enter_async_context(
            grpc.aio.insecure_channel(running.target("router"))
        )
        router = router_pb2_grpc.RouterStub(router_ch)
        await router.RegisterReplica(
            router_pb2.RegisterReplicaRequest(address=f"127.0.0.1:{second.port}"),
            metadata=metadata,
        )
        while True:
            listed = await router.ListReplicas(router_pb2.ListReplicasRequest(), metadata=metadata)
            if sum(r.state == router_pb2.REPLICA_STATE_SERVING for r in listed.replicas) == 2:
                break
            await asyncio.sleep(0.05)
        auth_ch = await stack.enter_async_context(grpc.aio.insecure_channel(running.target("auth")))
        gateway_ch = await stack.enter_async_context(
            grpc.aio.insecure_channel(running.target("gateway"))
        )
        gateway = gateway_pb2_grpc.GatewayStub(gateway_ch)
        auth = auth_pb2_grpc.AuthStub(auth_ch)
        admin = (("authorization", f"Bearer {options.admin_token}"),)
        keys = {}
        for seed, name in enumerate(ADAPTERS, start=1):
            tenant = await auth.CreateTenant(
                auth_pb2.CreateTenantRequest(name=f"{name}-owner", plan=auth_pb2.Plan()),
                metadata=admin,
            )
            created = await auth.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id), metadata=admin
            )
            keys[name] = created.api_key
            await upload_adapter(gateway, created.api_key, name, seed, state / "adapters")
        yield Cell(gateway, router, token, keys)


async def main_async(args: argparse.Namespace) -> None:
    raw: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp:
        async with AsyncExitStack() as stack:
            print("starting two meshes, each with two simulated replicas ...", flush=True)
            cells = {
                mode: await stack.enter_async_context(
                    mesh_for(mode, Path(tmp) / mode, args.adapter_load_s, args.adapter_idle_s)
                )
                for mode in MODES
            }
            # The same requests for both modes in each round: one seed per round.
            for mode in MODES:  # warm-up
                await run_cell(cells[mode], random.Random(0))
            for round_ in range(args.rounds):
                order = MODES if round_ % 2 == 0 else MODES[::-1]
                for mode in order:
                    raw[mode].append(await run_cell(cells[mode], random.Random(round_ + 1)))
                    await bench_mesh.settle(0.5)
                print(f"  round {round_ + 1}/{args.rounds} done", flush=True)

    table = {m: {k: summary([r[k] for r in raw[m]]) for k in METRICS} for m in MODES}
    lines = median_table(table, METRICS, "routing")
    lines.append(
        f"\n{REQUESTS} requests a round, {CONCURRENT} at a time, over {len(ADAPTERS)} adapters"
        f" (shares {', '.join(f'{w:.2f}' for w in WEIGHTS)}); two simulated {PROFILE} replicas"
        f" with one adapter slot each, a load taking {args.adapter_load_s:.2f} s;"
        f" {args.rounds} rounds, median [range]"
    )
    write_results(
        "adapter_routing", "\n".join(lines),
        rounds=args.rounds, summary=table, raw=raw, requests=REQUESTS, concurrent=CONCURRENT,
        adapters=len(ADAPTERS), weights=WEIGHTS, adapter_load_s=args.adapter_load_s,
        sim_profile=PROFILE,
    )  # fmt: skip


def rounds(text: str) -> int:
    # 0 would start both meshes and run the warm-up, then fail with no median.
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return count


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=rounds, default=3)
    # The inference setting's default: a rank-16 adapter of an 8B model on a GPU.
    parser.add_argument("--adapter-load-s", type=float, default=0.1)
    # The router's default (RouterSettings.adapter_idle_s).
    parser.add_argument("--adapter-idle-s", type=float, default=0.3)
    return parser


def main() -> None:
    run_on_uvloop(main_async, arguments())


if __name__ == "__main__":
    main()
