"""The cost of each hop (issue 19, benchmark 1): CPU microseconds per
delivered token, per streamed message and per request for the gateway, the
router and the inference servicer, against a bare grpc.aio pass-through hop
(bench.transport_floor) measured in the same run.

Every service is its own process, as in production: auth (SQLite), anomaly,
one simulated replica (`--engine sim`), the router and one public gateway
per routing design. Each cell reads every process's CPU time from
/proc/<pid>/stat before and after. Systems, taking turns within each round:

  sim_direct   the client straight to the replica: the replica's own cost
               (servicer plus simulated engine) and the reference latencies
  bare_proxy   client -> bare proxy -> replica: the floor of one Python hop
  mesh_proxy   client -> gateway -> router -> replica (the router on the token path)
  mesh_direct  client -> gateway -> replica, the router only admitting and
               picking (gateway `--routing direct`; skipped, with a note,
               where this branch's gateway has no such flag)
  base_direct  as mesh_direct, through a gateway run from another checkout
               (`--baseline-tree`: the revision before a change), sharing
               everything else: a before/after of the gateway, interleaved

Clients go through the public gateway with a real API key (a tenant on an
unlimited plan). The load generator is this process; its own CPU and the
machine's idle share are reported with every cell, and cells where the
machine had no CPU left are flagged SAT.

    .venv/bin/python -m bench.hop_cost [--rounds 3] [--quick] [--routing proxy,direct]
        [--concurrency 64,512] [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import secrets
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import mesh
from bench.cli import run_on_uvloop
from bench.hostile import new_tenant
from bench.mesh_load import Cell, cell_text, count_failures, failure_lines, flags, rotated, run_cell
from bench.stats import RESULTS, summary, write_results
from maas.v1 import auth_pb2, gateway_pb2_grpc, generation_pb2, inference_pb2, inference_pb2_grpc
from services.inference.sim_profiles import DEFAULT_PROFILE, PROFILES

PROMPT = "Summarize the following report in three sentences. " * 8
# The router's queue, total and per tenant: past the largest cell's streams,
# so a cell measures the hops, not admission refusals (one tenant sends all).
QUEUE = 100_000
# The concurrency of the cells that measure a request's cost: one token each,
# so a request is one message and its setup dominates.
REQUEST_CELL_CONCURRENCY = 64
PROCESSES = (
    "gateway_proxy", "gateway_direct", "gateway_base", "router", "replica", "proxy", "auth",
    "anomaly",
)  # fmt: skip


@dataclass
class Mesh:
    addr: dict[str, str]
    model: str
    key: str
    routings: list[str]
    # A gateway from another checkout (direct routing) runs beside this one's.
    baseline: bool = False

    def pids(self) -> dict[str, int]:
        return {name: mesh.PIDS[a] for name, a in self.addr.items() if name in PROCESSES}


@contextlib.asynccontextmanager
async def hop_mesh(
    state: Path, profile: str, routings: list[str], baseline_tree: Path | None = None
) -> AsyncIterator[Mesh]:
    admin = secrets.token_urlsafe(32)
    async with contextlib.AsyncExitStack() as stack:
        enter = stack.enter_async_context
        addr = {
            "auth": await enter(mesh.auth(state, admin, "hops-auth")),
            "anomaly": await enter(mesh.anomaly("hops-anomaly")),
            "replica": await enter(
                mesh.inference(
                    "sim-model",
                    "hops-replica",
                    PROFILES[profile].max_num_seqs,
                    engine="sim",
                    sim_profile=profile,
                )
            ),
        }
        addr["router"] = await enter(
            mesh.router(
                [addr["replica"]], "hops-router",
                "--max-queue", str(QUEUE), "--max-queue-per-tenant", str(QUEUE),
            )
        )  # fmt: skip
        addr["proxy"] = await enter(mesh.bare_proxy(addr["replica"], "hops-proxy"))
        for routing in routings:
            flag = ("--routing", routing) if mesh.gateway_has_routing() else ()
            addr[f"gateway_{routing}"] = await enter(
                mesh.gateway(
                    state, addr["router"], addr["auth"], addr["anomaly"],
                    f"hops-gateway-{routing}", *flag,
                )
            )  # fmt: skip
        if baseline_tree is not None:
            addr["gateway_base"] = await enter(
                mesh.gateway(
                    state, addr["router"], addr["auth"], addr["anomaly"],
                    "hops-gateway-base", "--routing", "direct", cwd=baseline_tree,
                )
            )  # fmt: skip
        key = await new_tenant(addr["auth"], admin, "bench", auth_pb2.Plan())
        model = await mesh.model_name(addr["replica"])
        yield Mesh(addr, model, key, routings, baseline_tree is not None)


def openers(
    m: Mesh, channels: dict[str, grpc.aio.Channel], tokens: int
) -> dict[str, Callable[[int], Any]]:
    """Per system, how its client opens stream number i."""
    nonce = itertools.count()

    def request(i: int) -> generation_pb2.GenerateRequest:
        # A new prompt every call: no stream rides on another's cached prefix.
        return generation_pb2.GenerateRequest(
            model=m.model,
            prompt=f"{next(nonce)}-{i} {PROMPT}",
            max_tokens=tokens,
            ignore_eos=True,
        )

    def inference(channel: grpc.aio.Channel) -> Callable[[int], Any]:
        stub = inference_pb2_grpc.InferenceStub(channel)
        return lambda i: stub.Generate(
            inference_pb2.InferenceGenerateRequest(request=request(i)), timeout=300
        )

    def gateway(channel: grpc.aio.Channel) -> Callable[[int], Any]:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        metadata = (("authorization", f"Bearer {m.key}"),)
        return lambda i: stub.Generate(request(i), metadata=metadata, timeout=300)

    out = {
        "sim_direct": inference(channels["replica"]),
        "bare_proxy": inference(channels["proxy"]),
    }
    for routing in m.routings:
        out[f"mesh_{routing}"] = gateway(channels[f"gateway_{routing}"])
    if m.baseline:
        out["base_direct"] = gateway(channels["gateway_base"])
    return out


def engine_us_per_token(streams: int) -> float | None:
    """The simulated engine's own CPU per token (bench.sim_engine's last
    run, at the nearest stream count): the rest of the replica's is its servicer."""
    try:
        rows = json.loads((RESULTS / "sim_engine.json").read_text())["rows"]
    except (OSError, KeyError, ValueError):
        return None
    row = min(rows, key=lambda r: abs(r["streams"] - streams))
    return float(row["cpu_us_per_token"]["median"])


async def main_async(args: argparse.Namespace) -> None:
    if args.quick:
        args.rounds, args.tokens, args.min_streams = 1, min(args.tokens, 32), 8
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    routings = mesh.gateway_routings(args.routing.split(","))
    notes = [
        f"routing '{r}' skipped: this gateway has no --routing flag (the design is absent)"
        for r in args.routing.split(",")
        if r not in routings
    ]
    if args.baseline_tree is not None:
        notes.append(f"base_direct: the gateway of the checkout in {args.baseline_tree}")
    for note in notes:
        print(note, flush=True)
    # Cells: (concurrency, tokens a stream); the last measures a request's cost.
    cells = [(c, args.tokens) for c in concurrencies] + [(REQUEST_CELL_CONCURRENCY, 1)]
    raw: dict[str, list[dict[str, float]]] = {}
    failures: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as state:
        print("starting auth, anomaly, a simulated replica, router, proxy, gateways ...")
        async with (
            hop_mesh(Path(state), args.profile, routings, args.baseline_tree) as m,
            contextlib.AsyncExitStack() as stack,
        ):
            channels = {
                name: await stack.enter_async_context(grpc.aio.insecure_channel(a))
                for name, a in m.addr.items()
            }
            systems: dict[int, dict[str, Callable[[int], Any]]] = {
                t: openers(m, channels, t) for t in {t for _, t in cells}
            }
            names = list(systems[args.tokens])
            pids = m.pids()
            for name in names:  # warm-up: connections, the router's limiter, caches
                await run_cell(systems[args.tokens][name], 64, 64, pids)
            for round_ in range(args.rounds):
                for c, t in cells:
                    for name in rotated(names, round_):
                        streams = max(args.min_streams, c)
                        if t == 1:  # the request cell: CPU time ticks are coarse, so many
                            streams = max(streams, args.request_streams)
                        cell: Cell = await run_cell(systems[t][name], c, streams, pids)
                        if cell.failed:
                            print(f"  {name} at {c}: {cell.failed} failed", flush=True)
                        count_failures(failures, f"{name} at {c} streams", cell)
                        raw.setdefault(f"{name}|{c}|{t}", []).append(cell.metrics())
                        await mesh.settle(args.settle_s)
                    print(f"  round {round_ + 1}: {c} streams x {t} tokens done", flush=True)
    report(args, names, concurrencies, raw, [*failure_lines(failures), *notes])


def report(
    args: argparse.Namespace,
    names: list[str],
    concurrencies: list[int],
    raw: dict[str, list[dict[str, float]]],
    notes: list[str],
) -> None:
    def col(name: str, c: int, metric: str, t: int | None = None) -> list[float]:
        return [r[metric] for r in raw.get(f"{name}|{c}|{t or args.tokens}", [])]

    def med(name: str, c: int, metric: str, t: int | None = None) -> float:
        values = col(name, c, metric, t)
        return summary(values)["median"] if values else float("nan")

    hops = {  # per system: the processes on its token path, as the table names them
        "sim_direct": ("replica",),
        "bare_proxy": ("proxy", "replica"),
        "mesh_proxy": ("gateway_proxy", "router", "replica", "auth"),
        "mesh_direct": ("gateway_direct", "router", "replica", "auth"),
        "base_direct": ("gateway_base", "router", "replica", "auth"),
    }
    lines = [
        f"Cost of each hop: profile {args.profile}, {args.tokens} tokens a stream, one replica;"
        f" median [min-max] over {args.rounds} round(s)",
        "",
        "CPU us per delivered token, by process"
        " (mesh = gateway + router; floor = the bare proxy's)",
        f"{'streams':>7} {'system':<12} {'tok/s':>16} {'tok/msg':>12} {'gateway':>16}"
        f" {'router':>16} {'replica':>16} {'proxy':>14} {'auth':>12} {'mesh/floor':>10}"
        f" {'idle':>5} {'client':>6} flags",
    ]
    for c in concurrencies:
        floor = med("bare_proxy", c, "proxy_us_per_token")
        for name in names:
            path = hops[name]
            gw = next((p for p in path if p.startswith("gateway")), None)

            def us(process: str | None, _name: str = name, _c: int = c) -> str:
                if process is None:
                    return "-"
                return cell_text(col(_name, _c, f"{process}_us_per_token"), ".0f")

            ratio = "-"
            if gw:
                mesh_us = med(name, c, f"{gw}_us_per_token") + med(name, c, "router_us_per_token")
                ratio = f"{mesh_us / floor:.2f}"
            rows = raw.get(f"{name}|{c}|{args.tokens}", [])
            lines.append(
                f"{c:>7} {name:<12} {cell_text(col(name, c, 'tokens_per_s'), ',.0f'):>16}"
                f" {cell_text(col(name, c, 'tokens_per_message'), '.1f'):>12} {us(gw):>16}"
                f" {us('router' if 'router' in path else None):>16} {us('replica'):>16}"
                f" {us('proxy' if 'proxy' in path else None):>14}"
                f" {us('auth' if 'auth' in path else None):>12} {ratio:>10}"
                f" {med(name, c, 'idle_share'):>5.2f} {med(name, c, 'client_cores'):>6.2f}"
                f" {flags(rows)}"
            )
    request_streams = max(args.min_streams, REQUEST_CELL_CONCURRENCY, args.request_streams)
    lines += [
        "",
        f"CPU us per request ({request_streams} streams of 1 token,"
        f" {REQUEST_CELL_CONCURRENCY} at a time: setup, one message)",
        f"{'system':<12} {'gateway':>10} {'router':>10} {'replica':>10} {'proxy':>10} {'auth':>10}",
    ]
    for name in names:
        path = hops[name]
        cells = []
        for process in ("gateway", "router", "replica", "proxy", "auth"):
            match = next((p for p in path if p.startswith(process)), None)
            cells.append(
                f"{med(name, REQUEST_CELL_CONCURRENCY, f'{match}_us_per_request', 1):,.0f}"
                if match
                else "-"
            )
        lines.append(f"{name:<12} " + " ".join(f"{x:>10}" for x in cells))
    lines += [
        "",
        "Latency added over sim_direct (medians; ms): TTFT p50/p99, inter-token p50/p99,"
        " and the p99 gap between messages (what coalescing costs a reader)",
        f"{'streams':>7} {'system':<12} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8}"
        f" {'ITL p99':>8} {'gap p99':>8} {'failed':>6}",
    ]
    for c in concurrencies:
        for name in names:
            d = {m: med("sim_direct", c, m) for m in ("ttft_p50_ms", "ttft_p99_ms")}
            d |= {m: med("sim_direct", c, m) for m in ("itl_p50_ms", "itl_p99_ms")}
            base = name == "sim_direct"
            added = {m: med(name, c, m) - (0 if base else d[m]) for m in d}
            sign = "" if base else "+"
            failed = sum(col(name, c, "failed"))
            lines.append(
                f"{c:>7} {name:<12} {added['ttft_p50_ms']:>{sign}9.2f}"
                f" {added['ttft_p99_ms']:>{sign}9.2f}"
                f" {added['itl_p50_ms']:>{sign}8.2f} {added['itl_p99_ms']:>{sign}8.2f}"
                f" {med(name, c, 'gap_p99_ms'):>8.1f} {failed:>6.0f}"
            )
    lines.append("  (sim_direct rows: its own absolute values, not differences)")
    engine = {c: engine_us_per_token(c) for c in concurrencies}
    lines += [
        "",
        "replica = servicer + simulated engine; the engine alone (bench.sim_engine, in process):"
        + ", ".join(f" {c} streams {e:.1f} us/token" for c, e in engine.items() if e is not None),
        "targets: mesh/floor <= 1.5 at 64 and 512 streams; TTFT added p50 <= 1 ms, p99 <= 5 ms"
        " at 512 streams",
        f"idle: share of this machine's {os.cpu_count()} cores idle over the cell (other"
        " users' load included); client: cores the load generator used;"
        " SAT: under 10% idle, the cell measured the cores, not the mesh;"
        " CLIENT: the load generator was near a full core",
        "tok/msg: tokens per message the client received; at 1 or more, a stream got at most"
        " one message per engine step (a step makes one token a stream)",
        "per message figures are in the JSON (per message the client received)",
        *notes,
    ]
    write_results(
        "hop_cost",
        "\n".join(lines),
        profile=args.profile,
        rounds=args.rounds,
        tokens_per_stream=args.tokens,
        systems=names,
        notes=notes,
        summary={k: {m: summary([r[m] for r in v]) for m in v[0]} for k, v in raw.items()},
        raw=raw,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,64,512,2048")
    parser.add_argument("--tokens", type=int, default=64, help="tokens a stream")
    parser.add_argument("--min-streams", type=int, default=16, help="streams per cell at least")
    parser.add_argument(
        "--request-streams",
        type=int,
        default=REQUEST_CELL_CONCURRENCY,
        help="streams of the request cell (in waves of 64): CPU time counts in 10 ms ticks",
    )
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
    parser.add_argument("--routing", default="proxy,direct", help="gateway designs compared")
    parser.add_argument("--settle-s", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="1 round, 32 tokens a stream")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="a checkout of another revision: its gateway (direct) runs as system base_direct",
    )
    run_on_uvloop(main_async, parser)


if __name__ == "__main__":
    main()
