"""The router restarted under load: steady streams through the gateway
(direct routing, its default) over simulated replicas, the router process
sent SIGTERM or SIGKILL and started again on its port as a supervisor
would, and what the clients saw.

    python -m bench.router_restart --engine sim --replicas 4 [--rounds 3]

Per restart it reports: the old process's exit after the signal (SIGTERM:
queued requests are refused at once, placed streams drain), the time from
the signal until the new router is SERVING with every replica known and
serving, until the first request sent after the signal has completed
through the gateway, the longest such request (the gateway holds a request
for a router that is down for up to 3 s: gateway/routes.py), the requests
that failed by status code, and the streams in flight at the signal that
still completed in full. SIGTERM and SIGKILL
rounds take turns; each is reported as the median and range over rounds.
The clients themselves do not retry: every refusal is counted. A failed request's
client waits `--failure-pause-s` before its next one, as a caller would."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import mesh, replica_flags
from bench.cli import run_on_uvloop
from bench.hostile import new_tenant
from bench.inference_streaming import free_port
from bench.stats import summary, write_results
from maas.v1 import auth_pb2, gateway_pb2_grpc, generation_pb2, router_pb2, router_pb2_grpc

SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


@dataclass
class Request:
    start: float
    end: float = 0.0
    tokens: int = 0
    code: str = "OK"
    details: str = ""


@dataclass
class RouterProcess:
    """The router as a supervisor runs it: one process at a time on one port."""

    port: int
    replicas: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["-m", "services.router", "--port", str(self.port)]
        args += ["--replicas", json.dumps(self.replicas)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                cwd=mesh.REPO, env=mesh._env(),
            )  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def stop(self, sig: signal.Signals) -> None:
        """Sends `sig` and returns once the process has exited."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        await asyncio.to_thread(self.proc.wait)


async def all_serving(address: str, replicas: int) -> None:
    """Returns once the router at `address` is SERVING with `replicas` replicas all serving."""
    await mesh._serving(address, "maas.v1.Router")
    async with grpc.aio.insecure_channel(address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        while True:
            listed = await stub.ListReplicas(router_pb2.ListReplicasRequest(), wait_for_ready=True)
            up = [r for r in listed.replicas if r.state == router_pb2.REPLICA_STATE_SERVING]
            if len(up) == replicas:
                return
            await asyncio.sleep(0.01)


@dataclass
class Load:
    """`clients` callers, each sending one request after another until stopped."""

    stub: gateway_pb2_grpc.GatewayAsyncStub
    key: str
    model: str
    tokens: int
    failure_pause_s: float
    requests: list[Request] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, n: int) -> None:
        metadata = (("authorization", f"Bearer {self.key}"),)
        i = 0
        while not self._stop.is_set():
            i += 1
            r = Request(time.perf_counter())
            self.requests.append(r)
            request = generation_pb2.GenerateRequest(
                model=self.model, prompt=f"{n}-{i} restart", max_tokens=self.tokens,
                ignore_eos=True,
            )  # fmt: skip
            try:
                async for chunk in self.stub.Generate(request, metadata=metadata, timeout=60):
                    r.tokens += len(chunk.token_ids)
            except grpc.aio.AioRpcError as err:
                r.code = err.code().name
                r.details = err.details() or ""
            r.end = time.perf_counter()
            if r.code != "OK":
                await asyncio.sleep(self.failure_pause_s)

    @contextlib.asynccontextmanager
    async def running(self, clients: int) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(self.client(n)) for n in range(clients)]
        try:
            yield
        finally:
            self._stop.set()
            await asyncio.gather(*tasks)


async def one_restart(
    router: RouterProcess, load: Load, args: argparse.Namespace, sig: str
) -> dict[str, Any]:
    async with load.running(args.clients):
        await asyncio.sleep(args.steady_s)
        signalled = time.perf_counter()
        await router.stop(SIGNALS[sig])
        exited = time.perf_counter()
        router.start()
        await all_serving(router.address, len(router.replicas))
        serving = time.perf_counter()
        await asyncio.sleep(args.steady_s)
    after = [r for r in load.requests if r.start >= signalled and r.code == "OK"]
    first_ok = min((r.end for r in after), default=float("nan"))
    crossing = [r for r in load.requests if r.start < signalled < r.end]
    failed = Counter(r.code for r in load.requests if r.code != "OK")
    return {
        "signal": sig,
        "exit_s": exited - signalled,
        "serving_s": serving - signalled,
        "restart_s": serving - exited,
        "first_ok_s": first_ok - signalled,
        "longest_ok_after_s": max((r.end - r.start for r in after), default=float("nan")),
        "requests": len(load.requests),
        "failed": dict(failed),
        # What each kind of failure said, once: which hop refused, and why.
        "failed_details": {f"{r.code}: {r.details}": 1 for r in load.requests if r.code != "OK"},
        "in_flight_at_signal": len(crossing),
        "crossing_completed": sum(
            1 for r in crossing if r.code == "OK" and r.tokens == args.tokens
        ),
    }


def table(rounds: list[dict[str, Any]]) -> str:
    def cell(values: list[float], fmt: str = ".2f") -> str:
        s = summary(values)
        return f"{s['median']:{fmt}} [{s['min']:{fmt}}-{s['max']:{fmt}}]"

    lines = [
        "| signal | exit s | signal to SERVING, all replicas s | restart s "
        "| first new request done s | longest new request s "
        "| failed / requests | failed by code | in flight at signal: completed / all |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sig in SIGNALS:
        mine = [r for r in rounds if r["signal"] == sig]
        if not mine:
            continue
        codes: Counter[str] = Counter()
        for r in mine:
            codes.update(r["failed"])
        failed = [float(sum(r["failed"].values())) for r in mine]
        lines.append(
            f"| {sig} | {cell([r['exit_s'] for r in mine])} "
            f"| {cell([r['serving_s'] for r in mine])} | {cell([r['restart_s'] for r in mine])} "
            f"| {cell([r['first_ok_s'] for r in mine])} "
            f"| {cell([r['longest_ok_after_s'] for r in mine])} "
            f"| {cell(failed, '.0f')} / {cell([float(r['requests']) for r in mine], '.0f')} "
            f"| {', '.join(f'{c} {n}' for c, n in sorted(codes.items())) or '-'} "
            f"| {sum(r['crossing_completed'] for r in mine)} / "
            f"{sum(r['in_flight_at_signal'] for r in mine)} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    admin = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            enter = stack.enter_async_context
            auth = await enter(mesh.auth(state, admin, "restart-auth"))
            anomaly = await enter(mesh.anomaly("restart-anomaly"))
            replicas, model = await replica_flags.start(stack, args, "restart")
            mesh.LOG_DIR.mkdir(parents=True, exist_ok=True)
            router = RouterProcess(free_port(), replicas, mesh.LOG_DIR / "restart-router.log")
            router.start()
            stack.callback(router.kill)
            await all_serving(router.address, len(replicas))
            gateway = await enter(
                mesh.gateway(state, router.address, auth, anomaly, "restart-gateway")
            )
            key = await new_tenant(auth, admin, "bench", auth_pb2.Plan())
            ch = await enter(grpc.aio.insecure_channel(gateway))
            stub = gateway_pb2_grpc.GatewayStub(ch)
            rounds: list[dict[str, Any]] = []
            for i in range(args.rounds):
                # Take turns, and alternate which goes first.
                order = list(SIGNALS) if i % 2 == 0 else list(reversed(SIGNALS))
                for sig in order:
                    load = Load(stub, key, model, args.tokens, args.failure_pause_s)
                    result = await one_restart(router, load, args, sig)
                    print(json.dumps(result), flush=True)
                    rounds.append(result)
    report = (
        f"Router restarted under load: {replica_flags.describe(args)}, {args.clients} "
        f"clients through one gateway (direct routing), {args.tokens} tokens a stream; "
        f"{args.rounds} round(s) per signal, median [min-max]\n" + table(rounds)
    )
    write_results("router_restart", report, config=vars(args), rounds=rounds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    replica_flags.add_flags(parser, replicas=4, max_num_seqs=64)
    # The router, not a model, is measured: simulated replicas unless told otherwise.
    parser.set_defaults(engine="sim")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64, help="tokens a stream")
    parser.add_argument("--steady-s", type=float, default=3.0, help="load before and after")
    parser.add_argument("--failure-pause-s", type=float, default=0.1)
    run_on_uvloop(main_async, parser)


if __name__ == "__main__":
    main()
