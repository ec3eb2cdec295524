"""The router's own scaling: the CPU cost of one admission and one dispatch
in its flow control (Dispatcher, FairQueue, replica choice, ReplicaSet as
pure state; no gRPC, no engine) as the queue, the tenants and the replicas
grow. It should stay flat or grow with the logarithm of the size.

Each cell builds a dispatcher whose replicas are all full and whose queue
holds the cell's waiting requests, then alternates batches of
  admit:    `acquire` of a new request, up to its park in the queue;
  dispatch: `release` of a running lease, which hands its slot to the next
            waiting request, up to that request's resumption with its lease;
so the queue stays at its size. Cost is time.process_time per operation.

The adapter cells (tenants x replicas) time one `pump` while the head
request waits for an adapter slot: every replica has room, but both its
adapter slots run other adapters' requests, and each waiting tenant wants
an adapter of its own, so no waiting request can be placed and the pump
looks past the head at every tenant's (`_from_reserve`,
`_past_adapter_head`).

Cells take turns within each round (the order rotates) and each cell is
the median over rounds with its range.

    .venv/bin/python -m bench.router_scaling [--rounds 3] [--quick] [--only flow|adapters]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from bench.stats import summary, write_results
from maas.v1 import generation_pb2
from observability import Telemetry, setup
from observability.settings import TelemetrySettings
from services.router.dispatcher import Dispatcher, FlowPolicy, Lease, Outcome, StreamEnd, Ticket
from services.router.fair_queue import DEFAULT
from services.router.limiter import GradientLimiter
from services.router.replicas import ReplicaSet

MODEL = "m"
# Slots per replica: a GPU engine's batch is larger, but the count of slots
# only sets how many leases are held, not what one admission costs.
SLOTS = 32
# Prompt prefixes in play: enough that affinity spreads them over replicas
# (--prefixes sets more: a prefix the router has not seen lately costs one
# rendezvous hash per replica, a known one none).
PREFIXES = 64
# Operations between two readings of the clock: a batch amortises the reading
# and the few loop turns that resume the granted waiters.
BATCH = 16
# A tenant's first-come request costs about this many tokens.
COST = 200.0
# A lease's stream ended normally, its first token 20 ms in: feeds the limiter
# like a real one (the limiter is capped at SLOTS, so it stays full).
ENDED = Outcome(StreamEnd.FINISHED, first_token_s=0.02)


@dataclass(frozen=True)
class Cell:
    dimension: str  # which size grows
    size: int
    waiting: int
    tenants: int
    replicas: int


@dataclass(frozen=True)
class AdapterCell:
    tenants: int  # each waiting for its own adapter
    replicas: int


# Pumps between two readings of the clock: few, as one costs up to a
# quarter second when it scans every tenant's head on every replica.
PUMP_BATCH = 4
# Adapters each replica holds at once: every slot runs another adapter's request.
ADAPTER_SLOTS = 2


def adapter_cells(quick: bool) -> list[AdapterCell]:
    tenants = [10, 1_000] if quick else [10, 100, 1_000]
    replicas = [1, 64] if quick else [1, 8, 64]
    return [AdapterCell(t, r) for t in tenants for r in replicas]


def cells(quick: bool) -> list[Cell]:
    queue = [10, 1_000, 100_000] if quick else [10, 100, 1_000, 10_000, 100_000]
    tenants = [10, 1_000, 10_000] if quick else [10, 100, 1_000, 10_000]
    replicas = [1, 16, 256] if quick else [1, 4, 16, 64, 256]
    # The other sizes stay at a busy but ordinary mesh's: 10 tenants, 8
    # replicas, 1,000 waiting (10,000 waiting when tenants grow, so each
    # tenant has a request queued).
    return (
        [Cell("queue", n, n, 10, 8) for n in queue]
        + [Cell("tenants", n, 10_000, n, 8) for n in tenants]
        + [Cell("replicas", n, 1_000, 10, n) for n in replicas]
    )


class Bench:
    """One cell's dispatcher, full and with its queue at the cell's size."""

    def __init__(self, cell: Cell, telemetry: Telemetry, seed: int, prefixes: int) -> None:
        self.cell = cell
        self.prefixes = prefixes
        self.rng = random.Random(seed)
        self.replicas = ReplicaSet(
            [f"10.0.{i // 250}.{i % 250}:50054" for i in range(cell.replicas)],
            telemetry,
            limiter=lambda: GradientLimiter(initial=SLOTS, max_limit=SLOTS),
        )
        for r in self.replicas.replicas:
            self.replicas.set_model(r, generation_pb2.ModelInfo(name=MODEL), (), SLOTS)
            self.replicas.set_serving(r, True)
        policy = FlowPolicy(max_queue=cell.waiting + 10 * BATCH, max_queue_per_tenant=cell.waiting)
        self.dispatcher = Dispatcher(self.replicas, policy)
        self.held: deque[Lease] = deque()
        self.turn = 0

    def ticket(self) -> Ticket:
        self.turn += 1
        return Ticket(
            tenant=f"tenant-{self.turn % self.cell.tenants}",
            priority=DEFAULT,
            model=MODEL,
            cost=COST,
            prefix_key=self.rng.randrange(self.prefixes),
        )

    def _hold(self, done: asyncio.Future[Lease]) -> None:
        if not done.cancelled() and done.exception() is None:
            self.held.append(done.result())

    async def fill(self) -> None:
        """Every slot taken, then the cell's requests waiting. The waiting
        ones go straight into the fair queue with a future each, as
        `acquire` queues them, without a task apiece: 100,000 parked
        coroutines would measure the event loop's memory, not the router."""
        loop = asyncio.get_running_loop()
        for _ in range(self.cell.replicas * SLOTS):
            self.held.append(await self.dispatcher.acquire(self.ticket()))
        # One more acquire creates the model's queue the way the router does.
        first = loop.create_task(self.dispatcher.acquire(self.ticket()))
        first.add_done_callback(self._hold)
        await asyncio.sleep(0)
        queue = self.dispatcher.queues[MODEL]
        for _ in range(self.cell.waiting - 1):
            ticket = self.ticket()
            future: asyncio.Future[Lease] = loop.create_future()
            future.add_done_callback(self._hold)
            queue.push(ticket.tenant, ticket.priority, ticket.cost, ticket.weight, (ticket, future))
        self.dispatcher.pump()
        await settle()

    async def run(self, min_ops: int, budget_s: float) -> dict[str, float]:
        """Admit and dispatch in alternating batches until `min_ops` of each
        or `budget_s` of CPU (a slow cell still gives a number)."""
        loop = asyncio.get_running_loop()
        admit_s = dispatch_s = 0.0
        ops = 0
        tasks: list[asyncio.Task[Lease]] = []
        while ops < min_ops and admit_s + dispatch_s < budget_s:
            start = time.process_time()
            for _ in range(BATCH):
                task = loop.create_task(self.dispatcher.acquire(self.ticket()))
                task.add_done_callback(self._hold)
                tasks.append(task)
            await asyncio.sleep(0)  # each runs up to its park in the queue
            admit_s += time.process_time() - start
            start = time.process_time()
            for _ in range(BATCH):
                self.dispatcher.release(self.held.popleft(), ENDED)
            await settle()  # the granted waiters resume with their leases
            dispatch_s += time.process_time() - start
            ops += BATCH
        waiting = self.dispatcher.waiting()
        if abs(waiting - self.cell.waiting) > 2 * BATCH:
            raise RuntimeError(f"{self.cell}: the queue drifted to {waiting}")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"admit_us": admit_s / ops * 1e6, "dispatch_us": dispatch_s / ops * 1e6, "ops": ops}


class AdapterBench:
    """One adapter cell's dispatcher: every adapter slot runs a request of
    another adapter, and each tenant waits for its own."""

    def __init__(self, cell: AdapterCell, telemetry: Telemetry) -> None:
        self.cell = cell
        self.replicas = ReplicaSet(
            [f"10.0.{i // 250}.{i % 250}:50054" for i in range(cell.replicas)],
            telemetry,
            limiter=lambda: GradientLimiter(initial=SLOTS, max_limit=SLOTS),
        )
        for r in self.replicas.replicas:
            self.replicas.set_model(
                r, generation_pb2.ModelInfo(name=MODEL), (), SLOTS, adapter_slots=ADAPTER_SLOTS
            )
            self.replicas.set_serving(r, True)
        waiting = cell.tenants
        policy = FlowPolicy(max_queue=waiting + BATCH, max_queue_per_tenant=waiting)
        self.dispatcher = Dispatcher(self.replicas, policy)
        self.tasks: list[asyncio.Task[Lease]] = []

    def ticket(self, tenant: str, adapter: str) -> Ticket:
        return Ticket(tenant=tenant, priority=DEFAULT, model=MODEL, cost=COST, adapter_id=adapter)

    async def fill(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.cell.replicas * ADAPTER_SLOTS):
            # The least loaded replica with a free adapter slot: one per slot.
            await self.dispatcher.acquire(self.ticket(f"hot-{i}", f"hot-{i}"))
        first = loop.create_task(self.dispatcher.acquire(self.ticket("cold-0", "cold-0")))
        self.tasks.append(first)
        await asyncio.sleep(0)
        queue = self.dispatcher.queues[MODEL]
        for t in range(1, self.cell.tenants):
            ticket = self.ticket(f"cold-{t}", f"cold-{t}")
            future: asyncio.Future[Lease] = loop.create_future()
            queue.push(ticket.tenant, ticket.priority, ticket.cost, ticket.weight, (ticket, future))
        if self.dispatcher.waiting() != self.cell.tenants:
            raise RuntimeError(f"{self.cell}: a cold request was placed")

    def run(self, min_pumps: int, budget_s: float) -> dict[str, float]:
        spent = 0.0
        pumps = 0
        while pumps < min_pumps and spent < budget_s:
            start = time.process_time()
            for _ in range(PUMP_BATCH):
                self.dispatcher.pump()
            spent += time.process_time() - start
            pumps += PUMP_BATCH
        if self.dispatcher.waiting() != self.cell.tenants:
            raise RuntimeError(f"{self.cell}: a cold request was placed")
        return {"pump_us": spent / pumps * 1e6, "pumps": pumps}

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def measure_adapters(
    cell: AdapterCell, telemetry: Telemetry, args: argparse.Namespace
) -> dict[str, float]:
    bench = AdapterBench(cell, telemetry)
    await bench.fill()
    try:
        bench.run(PUMP_BATCH, args.budget_s / 10)  # warm-up
        gc.collect()
        gc.freeze()
        try:
            return bench.run(args.min_ops, args.budget_s)
        finally:
            gc.unfreeze()
    finally:
        await bench.close()


async def settle() -> None:
    # A granted waiter resumes over a few loop turns (its future, asyncio.wait's
    # waiter, its task); four turns cover them all.
    for _ in range(4):
        await asyncio.sleep(0)


async def measure(
    cell: Cell, telemetry: Telemetry, seed: int, args: argparse.Namespace
) -> dict[str, float]:
    min_ops, budget_s = args.min_ops, args.budget_s
    bench = Bench(cell, telemetry, seed, args.prefixes)
    await bench.fill()
    await bench.run(BATCH * 2, budget_s)  # warm-up: the limiter's samples, caches
    # The cell's own objects (a queue of 100,000) would make every full
    # collection scan them: freeze them, so what is measured is the router's
    # work per operation, not the collector's walk over the heap.
    gc.collect()
    gc.freeze()
    try:
        return await bench.run(min_ops, budget_s)
    finally:
        gc.unfreeze()


async def main_async(args: argparse.Namespace) -> None:
    # Warnings only: each cell marks its replicas up, a log line apiece.
    telemetry = setup("router", TelemetrySettings(log_level="WARNING"))
    grid = cells(args.quick) if args.only in ("all", "flow") else []
    adapter_grid = adapter_cells(args.quick) if args.only in ("all", "adapters") else []
    jobs: list[Cell | AdapterCell] = [*grid, *adapter_grid]
    raw: dict[str, list[dict[str, float]]] = {key_of(c): [] for c in jobs}
    try:
        for round_ in range(args.rounds):
            shift = round_ * len(jobs) // args.rounds
            for cell in jobs[shift:] + jobs[:shift]:
                if isinstance(cell, Cell):
                    result = await measure(cell, telemetry, round_, args)
                else:
                    result = await measure_adapters(cell, telemetry, args)
                raw[key_of(cell)].append(result)
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        telemetry.shutdown()

    lines: list[str] = []
    table: dict[str, dict[str, dict[str, float]]] = {}
    growth: dict[str, dict[str, Any]] = {}
    if grid:
        lines += flow_table(grid, raw, table, growth)
    if adapter_grid:
        lines += adapter_table(adapter_grid, raw, table)
    write_results(
        args.name,
        "\n".join(lines),
        rounds=args.rounds,
        quick=args.quick,
        only=args.only,
        slots_per_replica=SLOTS,
        adapter_slots_per_replica=ADAPTER_SLOTS,
        prefixes=args.prefixes,
        cells=[c.__dict__ for c in grid],
        adapter_cells=[c.__dict__ for c in adapter_grid],
        summary=table,
        growth=growth,
        raw=raw,
    )


def key_of(cell: Cell | AdapterCell) -> str:
    if isinstance(cell, Cell):
        return f"{cell.dimension}={cell.size}"
    return f"adapters:tenants={cell.tenants},replicas={cell.replicas}"


def flow_table(
    grid: list[Cell],
    raw: dict[str, list[dict[str, float]]],
    table: dict[str, dict[str, dict[str, float]]],
    growth: dict[str, dict[str, Any]],
) -> list[str]:
    metrics = ("admit_us", "dispatch_us")
    for cell in grid:
        runs = raw[key_of(cell)]
        table[key_of(cell)] = {m: summary([r[m] for r in runs]) for m in metrics}
    header = f"{'dimension':<10} {'size':>8} {'admit us':>24} {'dispatch us':>24}"
    lines = [header, "-" * len(header)]
    for cell in grid:
        row = table[key_of(cell)]
        lines.append(
            f"{cell.dimension:<10} {cell.size:>8,} "
            + " ".join(
                f"{row[m]['median']:.1f} [{row[m]['min']:.1f}-{row[m]['max']:.1f}]".rjust(24)
                for m in metrics
            )
        )
    lines += ["", "growth, largest size over smallest (medians; flat is 1.0):"]
    for dimension in ("queue", "tenants", "replicas"):
        sizes = [c for c in grid if c.dimension == dimension]
        lo, hi = f"{dimension}={sizes[0].size}", f"{dimension}={sizes[-1].size}"
        ratios = {m: table[hi][m]["median"] / table[lo][m]["median"] for m in metrics}
        growth[dimension] = {"from": sizes[0].size, "to": sizes[-1].size, **ratios}
        lines.append(
            f"  {dimension:<9} {sizes[0].size:>5,} -> {sizes[-1].size:>7,}"
            f" (x{sizes[-1].size // sizes[0].size:,}):"
            f" admit x{ratios['admit_us']:.2f}, dispatch x{ratios['dispatch_us']:.2f}"
        )
    return lines


def adapter_table(
    grid: list[AdapterCell],
    raw: dict[str, list[dict[str, float]]],
    table: dict[str, dict[str, dict[str, float]]],
) -> list[str]:
    for cell in grid:
        table[key_of(cell)] = {"pump_us": summary([r["pump_us"] for r in raw[key_of(cell)]])}
    header = f"{'tenants waiting for adapters':>28} {'replicas':>8} {'pump us':>28}"
    lines = ["", header, "-" * len(header)]
    for cell in grid:
        row = table[key_of(cell)]["pump_us"]
        lines.append(
            f"{cell.tenants:>28,} {cell.replicas:>8,} "
            + f"{row['median']:,.1f} [{row['min']:,.1f}-{row['max']:,.1f}]".rjust(28)
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="three sizes a dimension, fewer ops")
    parser.add_argument("--min-ops", type=int, default=0, help="admissions per cell (0: by mode)")
    parser.add_argument(
        "--budget-s", type=float, default=0.0, help="CPU seconds per cell at most (0: by mode)"
    )
    parser.add_argument(
        "--prefixes", type=int, default=PREFIXES, help="distinct prompt prefixes in play"
    )
    parser.add_argument(
        "--only",
        choices=("all", "flow", "adapters"),
        default="all",
        help="flow: admit and dispatch cells; adapters: the pump past an adapter head",
    )
    parser.add_argument("--name", default="router_scaling", help="results file name")
    args = parser.parse_args()
    # Enough operations that a cell's median is steady; a cap on CPU per cell
    # so a cell that scales badly still finishes in seconds.
    args.min_ops = args.min_ops or (400 if args.quick else 2_000)
    args.budget_s = args.budget_s or (0.5 if args.quick else 2.0)
    import uvloop

    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
