"""A hostile tenant against a bystander: what each attack of issue 17 costs a
well-behaved second tenant running a steady load beside it.

The mesh runs as processes (auth, inference, router, anomaly, gateway with
its HTTP face), as `make run` starts it, and each tenant's client runs in a
process of its own. In-process would measure the wrong thing: several of
the attacks aim at the gateway's event loop (100 MB bodies parsed, keys
looked up, constraints compiled on it), and with every service and both
clients on one loop and one GIL, the attacker's own client cost would land
on the bystander's latency.

Each round runs, in turn, an idle phase and an attack phase for every
attack (idle, attack A, idle, attack B, ...); in every phase the bystander
sends the same open-loop load (Poisson arrivals, small generations), and
during an attack phase the attacker floods one attack at full speed (a
closed loop of --attack-clients clients). Reported per attack, median and
[min-max] over rounds: the bystander's time to first token p50 and p99 and
its completed share, on the idle mesh just before and under the attack.

Attacks (issue 17):
  duplicate_id   six concurrent Generate calls with one x-request-id, on a
                 plan of one concurrent request
  big_post       unauthenticated 100 MB POSTs to /v1/chat/completions
  random_keys    Generate with random API keys
  huge_constraint  a 200 kB regex and a 5,000-property JSON schema
  huge_max_tokens  max_tokens 100,000,000 with a 60 s deadline
  cancel_early   Generate cancelled right after the first token
  slow_heads     (beyond issue 17's list) slowloris: each attacker client holds
                 100 HTTP connections, each with a request head never finished
  cpu_burn       a control, not an attack: the attacker's process spins one
                 core and sends nothing. On this 2-core machine the attacker's
                 client shares the cores with the mesh and the engine; this
                 row is what that sharing alone costs the bystander.

    .venv/bin/python -m bench.hostile [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing
import os
import random
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import mesh as bench_mesh
from bench.cli import run_on_uvloop
from bench.inference_streaming import free_port
from bench.stats import percentile, summary, write_results
from maas.v1 import auth_pb2, auth_pb2_grpc, gateway_pb2_grpc, generation_pb2

ATTACKS = (
    "duplicate_id",
    "big_post",
    "random_keys",
    "huge_constraint",
    "huge_max_tokens",
    "cancel_early",
    "slow_heads",
    "cpu_burn",
)
# The bystander's generations: small, like an interactive client's.
BYSTANDER_TOKENS = 16
DEADLINE_S = 30.0
WARMUP_S = 2.0  # of each phase, not counted
BIG_BODY_BYTES = 100 * 1024 * 1024
# Issue 17's duplicates: six calls at once with one id.
DUPLICATES = 6
ATTACK_TOKENS = 64
# Connections each slow_heads client holds, and how long it waits for the
# gateway to cut one (past its 10 s head timeout).
SLOW_HEADS_PER_CLIENT = 100
SLOW_HEAD_WAIT_S = 15.0


@dataclass
class Sample:
    start: float
    ttft: float | None = None
    code: str = "OK"


# The name the simulated replica serves.
SIM_MODEL = "sim-llama-8b"

# --- the mesh ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def hostile_mesh(
    model: Path | str, state: Path, admin_token: str, *, engine: str, sim_profile: str
) -> AsyncIterator[dict[str, str]]:
    """auth, inference (the CPU engine on `model`, or the simulated engine under
    `sim_profile`), router, anomaly and the gateway (gRPC and HTTP), as processes."""
    ports = {name: free_port() for name in ("anomaly", "gateway", "http")}
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    process = bench_mesh.process
    async with contextlib.AsyncExitStack() as stack:
        addr["auth"] = await stack.enter_async_context(
            bench_mesh.auth(state, admin_token, "hostile-auth")
        )
        addr["inference"] = await stack.enter_async_context(
            bench_mesh.inference(model, "hostile-inference", engine=engine, sim_profile=sim_profile)
        )
        addr["router"] = await stack.enter_async_context(
            bench_mesh.router([addr["inference"]], "hostile-router")
        )
        await stack.enter_async_context(
            process(
                ["-m", "services.anomaly", "--port", str(ports["anomaly"])],
                "hostile-anomaly.log", addr["anomaly"], "maas.v1.Anomaly",
            )
        )  # fmt: skip
        await stack.enter_async_context(
            process(
                ["-m", "gateway", "--port", str(ports["gateway"]),
                 "--http-port", str(ports["http"]),
                 "--router-address", addr["router"], "--auth-address", addr["auth"],
                 "--anomaly-address", addr["anomaly"],
                 "--usage-outbox-path", str(state / "outbox.db")],
                "hostile-gateway.log", addr["gateway"], "maas.v1.Gateway",
            )
        )  # fmt: skip
        yield addr


async def new_tenant(auth: str, admin_token: str, name: str, plan: auth_pb2.Plan) -> str:
    """A tenant on `plan` with one key; returns the key."""
    admin = (("authorization", f"Bearer {admin_token}"),)
    async with grpc.aio.insecure_channel(auth) as ch:
        stub = auth_pb2_grpc.AuthStub(ch)
        tenant = await stub.CreateTenant(auth_pb2.CreateTenantRequest(name=name), metadata=admin)
        await stub.SetPlan(
            auth_pb2.SetPlanRequest(tenant_id=tenant.tenant_id, plan=plan), metadata=admin
        )
        created = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name=name), metadata=admin
        )
    return str(created.api_key)


# --- the bystander -----------------------------------------------------------


async def bystander_request(
    stub: gateway_pb2_grpc.GatewayAsyncStub, model: str, key: str, n: int, into: list[Sample]
) -> None:
    sample = Sample(time.perf_counter())
    into.append(sample)
    request = generation_pb2.GenerateRequest(
        model=model, prompt=f"A calm day, number {n}.", max_tokens=BYSTANDER_TOKENS, seed=n
    )
    try:
        async for chunk in stub.Generate(
            request, metadata=(("authorization", f"Bearer {key}"),), timeout=DEADLINE_S
        ):
            if chunk.token_ids and sample.ttft is None:
                sample.ttft = time.perf_counter() - sample.start
    except grpc.aio.AioRpcError as err:
        sample.code = err.code().name


def bystander_load(
    gateway: str, model: str, key: str, rate: float, until: float, seed: int
) -> list[Sample]:
    """Runs in a worker process: Poisson arrivals at `rate`/s until `until`."""
    import uvloop

    async def run() -> list[Sample]:
        rng = random.Random(seed)
        samples: list[Sample] = []
        tasks: set[asyncio.Task[None]] = set()
        async with grpc.aio.insecure_channel(gateway) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            next_at, n = time.perf_counter(), 0
            while next_at < until:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                n += 1
                task = asyncio.create_task(bystander_request(stub, model, key, n, samples))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += rng.expovariate(rate)
            if tasks:
                await asyncio.wait(tasks)
        return samples

    return uvloop.run(run())


# --- the attacks ---------------------------------------------------------------


def _code(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return err.code().name
    return type(err).__name__


async def _drain(call: Any) -> str:
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return _code(err)
    return "OK"


class Attacker:
    def __init__(self, addr: dict[str, str], model: str, key: str, rng: random.Random) -> None:
        self.addr = addr
        self.model = model
        self.key = key
        self.rng = rng
        self.codes: Counter[str] = Counter()
        self._n = 0

    @functools.cached_property
    def big_body(self) -> bytes:
        content = "a" * BIG_BODY_BYTES
        return json.dumps(
            {"model": self.model, "messages": [{"role": "user", "content": content}]}
        ).encode()

    @functools.cached_property
    def huge_regex(self) -> str:
        # Alternation of 20,000 distinct words: 200 kB, legal, and slow to compile to a grammar.
        return "(" + "|".join(f"w{i:07d}" for i in range(20_000)) + ")"

    @functools.cached_property
    def huge_schema(self) -> str:
        properties = {f"p{i}": {"type": "string", "maxLength": 8} for i in range(5_000)}
        return json.dumps(
            {"type": "object", "properties": properties, "required": list(properties)}
        )

    def metadata(self, key: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key or self.key}"),)

    def request(self, **fields: Any) -> generation_pb2.GenerateRequest:
        self._n += 1
        fields.setdefault("max_tokens", ATTACK_TOKENS)
        return generation_pb2.GenerateRequest(
            model=self.model, prompt=f"Attack {self._n}: flood the mesh.", **fields
        )

    async def duplicate_id(self, stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
        metadata = (*self.metadata(), ("x-request-id", f"dup-{secrets.token_hex(6)}"))
        request = self.request()
        calls = [stub.Generate(request, metadata=metadata, timeout=DEADLINE_S)]
        calls += [
            stub.Generate(request, metadata=metadata, timeout=DEADLINE_S)
            for _ in range(DUPLICATES - 1)
        ]
        self.codes.update(await asyncio.gather(*(_drain(c) for c in calls)))

    async def big_post(self, stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
        """Raw HTTP on a socket: a client library would spend the attacker's CPU
        copying the body, and the attacker's speed is the point."""
        host, port = self.addr["http"].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: mesh\r\n"
                b"content-type: application/json\r\n"
                + f"content-length: {len(self.big_body)}\r\n\r\n".encode()
            )
            writer.write(self.big_body)
            await writer.drain()
            status = (await reader.readline()).split(b" ")[1:2]
            self.codes[f"HTTP {status[0].decode() if status else '?'}"] += 1
        except (ConnectionError, OSError) as err:
            # A server that refuses the body early may close while it is still being sent.
            self.codes[type(err).__name__] += 1
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def random_keys(self, stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
        key = f"maas_{secrets.token_urlsafe(24)}"
        call = stub.Generate(self.request(), metadata=self.metadata(key), timeout=DEADLINE_S)
        self.codes[await _drain(call)] += 1

    async def huge_constraint(self, stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
        if self.rng.random() < 0.5:
            request = self.request(max_tokens=8, regex=self.huge_regex)
        else:
            request = self.request(max_tokens=8, json_schema=self.huge_schema)
        call = stub.Generate(request, metadata=self.metadata(), timeout=DEADLINE_S)
        self.codes[await _drain(call)] += 1

    async def huge_max_tokens(self, stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
        request = self.request(max_tokens=100_000_000)
        # Issue 17's case: a 60 s deadline.
        call = stub.Generate(request, metadata=self.metadata(), timeout=60.0)
        self.codes[await _drain(call)] += 1

    async def cancel_early(self, stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
        call = stub.Generate(
            self.request(max_tokens=256), metadata=self.metadata(), timeout=DEADLINE_S
        )
        try:
            async for _ in call:
                break
            self.codes["cancelled after the first chunk"] += 1
        except grpc.aio.AioRpcError as err:
            self.codes[_code(err)] += 1
        finally:
            call.cancel()

    async def slow_heads(self, stub: gateway_pb2_grpc.GatewayAsyncStub) -> None:
        host, port = self.addr["http"].rsplit(":", 1)
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for _ in range(SLOW_HEADS_PER_CLIENT):
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError as err:
                self.codes[type(err).__name__] += 1
                continue
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: mesh\r\n")
            held.append((reader, writer))

        async def outcome(reader: asyncio.StreamReader) -> str:
            try:
                await asyncio.wait_for(reader.read(), SLOW_HEAD_WAIT_S)
            except TimeoutError:
                return "held open"
            except (ConnectionError, OSError):
                pass
            return "cut by the gateway"

        self.codes.update(await asyncio.gather(*(outcome(r) for r, _ in held)))
        for _, writer in held:
            writer.close()


def attack_load(
    addr: dict[str, str],
    model: str,
    key: str,
    attack: str,
    clients: int,
    until: float,
    seed: int,
    rate: float = 0.0,
) -> tuple[dict[str, int], float]:
    """Runs in a worker process: `clients` attackers until `until` (closed
    loop, or `rate` attacks a second in all); returns what the mesh answered
    them, by status, and the CPU seconds the attacker's own process used."""
    import uvloop

    cpu_at_start = time.process_time()
    if attack == "cpu_burn":
        while time.perf_counter() < until:
            pass
        return {"spun, sent nothing": 1}, time.process_time() - cpu_at_start
    # Two uploads of 100 MB at once already saturate loopback; more only queue in the kernel.
    clients = min(clients, 2) if attack == "big_post" else clients

    async def run() -> dict[str, int]:
        attacker = Attacker(addr, model, key, random.Random(seed))
        one: Callable[[gateway_pb2_grpc.GatewayAsyncStub], Awaitable[None]] = getattr(
            attacker, attack
        )
        async with grpc.aio.insecure_channel(addr["gateway"]) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)

            async def client() -> None:
                # Open loop at `rate` attacks a second over all clients; 0:
                # closed loop, each client's next attack as soon as the last ends.
                gap = clients / rate if rate else 0.0
                next_at = time.perf_counter()
                while time.perf_counter() < until:
                    if gap:
                        next_at += gap
                        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    try:
                        await one(stub)
                    except Exception as err:  # counted: the attacker never stops
                        attacker.codes[_code(err)] += 1

            await asyncio.gather(*(client() for _ in range(clients)))
        return dict(attacker.codes)

    codes = uvloop.run(run())
    return codes, time.process_time() - cpu_at_start


# --- phases and rounds ---------------------------------------------------------


@dataclass
class Phase:
    samples: list[Sample]
    window: tuple[float, float]
    attacker: dict[str, int]
    # Cores the attacker's client process kept busy over the phase.
    attacker_cores: float = 0.0

    def counted(self) -> list[Sample]:
        lo, hi = self.window
        return [s for s in self.samples if lo <= s.start <= hi]

    def ttft_ms(self, q: float) -> float:
        return percentile([s.ttft for s in self.counted() if s.ttft is not None], q) * 1e3

    def completed_share(self) -> float:
        counted = self.counted()
        return sum(s.code == "OK" for s in counted) / max(1, len(counted))

    def failures(self) -> Counter[str]:
        return Counter(s.code for s in self.counted() if s.code != "OK")


async def run_phase(
    pool: ProcessPoolExecutor,
    addr: dict[str, str],
    model: str,
    keys: dict[str, str],
    attack: str | None,
    args: argparse.Namespace,
    seed: int,
) -> Phase:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    until = start + WARMUP_S + args.seconds
    bystander = loop.run_in_executor(
        pool, bystander_load, addr["gateway"], model, keys["bystander"], args.rate, until, seed
    )
    attacked: dict[str, int] = {}
    cpu_s = 0.0
    if attack is not None:
        key = keys["duplicate_id" if attack == "duplicate_id" else "attacker"]
        attacked, cpu_s = await loop.run_in_executor(
            pool, attack_load, addr, model, key, attack, args.attack_clients, until, seed + 1,
            args.attack_rate,
        )  # fmt: skip
    samples = await bystander
    cores = cpu_s / (time.perf_counter() - start)
    return Phase(samples, (start + WARMUP_S, until), attacked, cores)


async def main_async(args: argparse.Namespace) -> None:
    from local_models.tiny_llama import build_tiny_model

    attacks = args.attacks or list(ATTACKS)
    model_dir: Path | str = (
        SIM_MODEL
        if args.engine == "sim"
        else build_tiny_model(bench_mesh.REPO / ".maas" / "models" / "tiny-llama")
    )
    admin_token = secrets.token_urlsafe(32)
    rows: dict[str, dict[str, list[float]]] = {a: {} for a in attacks}
    answered: dict[str, Counter[str]] = {a: Counter() for a in attacks}
    bystander_failures: dict[str, Counter[str]] = {a: Counter() for a in attacks}
    with tempfile.TemporaryDirectory() as state:
        print("starting the mesh (auth, inference, router, anomaly, gateway) ...", flush=True)
        async with hostile_mesh(
            model_dir, Path(state), admin_token, engine=args.engine, sim_profile=args.sim_profile
        ) as addr:
            model = await bench_mesh.model_name(addr["inference"])
            unlimited = auth_pb2.Plan()
            keys = {
                "bystander": await new_tenant(addr["auth"], admin_token, "bystander", unlimited),
                "attacker": await new_tenant(addr["auth"], admin_token, "attacker", unlimited),
                # Issue 17's duplicate-id attacker is on a plan of one concurrent request.
                "duplicate_id": await new_tenant(
                    addr["auth"], admin_token, "dup", auth_pb2.Plan(max_concurrent_requests=1)
                ),
            }
            with ProcessPoolExecutor(
                max_workers=2, mp_context=multiprocessing.get_context("spawn")
            ) as pool:
                await run_phase(pool, addr, model, keys, None, args, seed=1)  # warm-up
                for round_ in range(args.rounds):
                    for i, attack in enumerate(attacks):
                        seed = 1000 * round_ + 10 * i
                        idle = await run_phase(pool, addr, model, keys, None, args, seed)
                        await bench_mesh.settle(1.0)
                        hit = await run_phase(pool, addr, model, keys, attack, args, seed)
                        # Let what the attack left (queued work, ejections) clear before the next.
                        await bench_mesh.settle(args.settle_s)
                        row = {
                            "idle_p50_ms": idle.ttft_ms(50),
                            "idle_p99_ms": idle.ttft_ms(99),
                            "idle_completed": idle.completed_share(),
                            "attack_p50_ms": hit.ttft_ms(50),
                            "attack_p99_ms": hit.ttft_ms(99),
                            "attack_completed": hit.completed_share(),
                            "p99_over_idle": hit.ttft_ms(99) / idle.ttft_ms(99),
                            "attacker_client_cores": hit.attacker_cores,
                        }
                        for key, value in row.items():
                            rows[attack].setdefault(key, []).append(value)
                        answered[attack].update(hit.attacker)
                        bystander_failures[attack].update(hit.failures() + idle.failures())
                    print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
    report(args, attacks, rows, answered, bystander_failures)


def _cell(values: list[float], fmt: str) -> str:
    cell = summary(values)
    return f"{cell['median']:{fmt}} [{cell['min']:{fmt}}-{cell['max']:{fmt}}]"


def report(
    args: argparse.Namespace,
    attacks: list[str],
    rows: dict[str, dict[str, list[float]]],
    answered: dict[str, Counter[str]],
    bystander_failures: dict[str, Counter[str]],
) -> None:
    header = (
        f"{'attack':<16} {'phase':<7} {'TTFT p50 ms':>22} {'TTFT p99 ms':>22}"
        f" {'completed':>20} {'p99/idle':>18} {'attacker cores':>18}"
    )
    lines = [header, "-" * len(header)]
    for attack in attacks:
        row = rows[attack]
        for phase in ("idle", "attack"):
            attacking = phase == "attack"
            ratio = _cell(row["p99_over_idle"], ".2f") if attacking else ""
            cores = _cell(row["attacker_client_cores"], ".2f") if attacking else ""
            lines.append(
                f"{attack if phase == 'idle' else '':<16} {phase:<7}"
                f" {_cell(row[f'{phase}_p50_ms'], '.0f'):>22}"
                f" {_cell(row[f'{phase}_p99_ms'], '.0f'):>22}"
                f" {_cell(row[f'{phase}_completed'], '.2f'):>20} {ratio:>18} {cores:>18}"
            )
    lines += ["", "what the mesh answered the attacker (all rounds):"]
    for attack in attacks:
        counts = ", ".join(f"{k}={v}" for k, v in answered[attack].most_common())
        lines.append(f"  {attack:<16} {counts}")
    lines += ["", "the bystander's failures (all rounds, idle and attack phases):"]
    for attack in attacks:
        counts = ", ".join(f"{k}={v}" for k, v in bystander_failures[attack].most_common())
        lines.append(f"  {attack:<16} {counts or 'none'}")
    lines += [
        "",
        f"bystander: {args.rate}/s Poisson, {BYSTANDER_TOKENS} tokens, {DEADLINE_S:.0f} s deadline;"
        f" attacker: {args.attack_clients} clients, "
        + (f"{args.attack_rate:g} attacks/s in all" if args.attack_rate else "closed loop")
        + f"; {args.seconds:.0f} s a phase,"
        f" {args.rounds} rounds, median [min-max] over rounds",
        "targets: completed 1.00 under every attack, p99/idle <= 2",
        f"engine: {args.engine}" + (f" ({args.sim_profile})" if args.engine == "sim" else ""),
        "attacker cores: CPU the attacker's own client process used, of this machine's"
        f" {os.cpu_count()}; cpu_burn is that much CPU taken with no request sent",
    ]
    name = f"hostile_at_{args.attack_rate:g}_per_s" if args.attack_rate else "hostile"
    write_results(
        f"{name}_sim" if args.engine == "sim" else name,
        "\n".join(lines), rounds=args.rounds, seconds=args.seconds,
        rate=args.rate, attack_clients=args.attack_clients, attack_rate=args.attack_rate,
        engine=args.engine, sim_profile=args.sim_profile if args.engine == "sim" else None,
        summary={a: {k: summary(v) for k, v in rows[a].items()} for a in attacks},
        raw=rows, attacker_outcomes={a: dict(c) for a, c in answered.items()},
        bystander_failures={a: dict(c) for a, c in bystander_failures.items()},
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds a phase")
    parser.add_argument("--rate", type=float, default=2.0, help="bystander requests per second")
    parser.add_argument("--attack-clients", type=int, default=8)
    parser.add_argument(
        "--attack-rate",
        type=float,
        default=0.0,
        help="attacks a second over all clients (open loop); 0: as fast as answered",
    )
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--attacks", nargs="*", choices=ATTACKS, help="default: all")
    parser.add_argument(
        "--engine",
        choices=("vllm", "sim"),
        default="vllm",
        help="sim: the simulated engine, so the replica does not take the cores the mesh needs",
    )
    parser.add_argument("--sim-profile", default="llama-3.1-8b-h100")
    run_on_uvloop(main_async, parser)


if __name__ == "__main__":
    main()
