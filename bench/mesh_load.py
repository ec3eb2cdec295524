"""What bench.hop_cost and bench.capacity share: streams that record when
each message came, the CPU time and memory of the mesh's processes read
from /proc around a cell, how busy the whole machine was meanwhile, and the
table cells (median [min-max] over rounds)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.stats import percentile, summary

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# A cell where the machine was idle less than this share of its cores was
# CPU-bound: its numbers say what the cores allowed, not what the mesh does.
SATURATED_IDLE = 0.10
# A client process above this share of one core delays the streams it reads.
CLIENT_BOUND_CORES = 0.85
# Every stream's deadline: far past a cell's length, so only a stuck mesh trips it.
DEADLINE_S = 300.0
# RSS is sampled this often during a cell, for the peak with every stream open.
RSS_SAMPLE_S = 0.05


@dataclass
class Stream:
    """One request as its client saw it: when each message came and what it held."""

    start: float
    times: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    messages: int = 0
    code: str = "OK"
    details: str = ""
    end: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(self.sizes)

    @property
    def ttft(self) -> float | None:
        return self.times[0] - self.start if self.times else None

    @property
    def itl(self) -> float | None:
        """Mean time between tokens after the first message: a token carried
        in a later, fuller message counts as having waited for it."""
        later = self.tokens - self.sizes[0] if self.sizes else 0
        return (self.times[-1] - self.times[0]) / later if later > 0 else None


async def read(call: Any) -> Stream:
    stream = Stream(time.perf_counter())
    try:
        async for chunk in call:
            stream.messages += 1
            if n := len(chunk.token_ids):
                stream.times.append(time.perf_counter())
                stream.sizes.append(n)
    except grpc.aio.AioRpcError as err:
        stream.code = err.code().name
        stream.details = err.details() or ""
    stream.end = time.perf_counter()
    return stream


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU time of `pid` (this process if None)."""
    stat = Path(f"/proc/{pid or 'self'}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES


def machine_idle() -> tuple[float, float]:
    """Idle and total jiffies of every core since boot (/proc/stat's cpu line)."""
    with Path("/proc/stat").open() as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return idle, sum(values)


@dataclass
class Cell:
    """One system at one load, once."""

    streams: list[Stream]
    wall_s: float
    # CPU seconds each named process spent over the cell ("client": this one).
    cpu_s: dict[str, float]
    # Peak RSS over the cell minus RSS before it, per named process.
    rss_growth: dict[str, int]
    idle_share: float

    @property
    def failed(self) -> int:
        return sum(s.code != "OK" for s in self.streams)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.streams)

    def metrics(self) -> dict[str, float]:
        tokens = max(1, self.tokens)
        ttfts = [t for s in self.streams if (t := s.ttft) is not None]
        itls = [t for s in self.streams if (t := s.itl) is not None]
        gaps = [b - a for s in self.streams for a, b in zip(s.times, s.times[1:], strict=False)]
        out = {
            "tokens_per_s": self.tokens / self.wall_s,
            "tokens_per_message": self.tokens / max(1, self.messages),
            "ttft_p50_ms": percentile(ttfts, 50) * 1e3,
            "ttft_p99_ms": percentile(ttfts, 99) * 1e3,
            "itl_p50_ms": percentile(itls, 50) * 1e3,
            "itl_p99_ms": percentile(itls, 99) * 1e3,
            "gap_p99_ms": percentile(gaps, 99) * 1e3 if gaps else 0.0,
            "failed": float(self.failed),
            "idle_share": self.idle_share,
            "client_cores": self.cpu_s.get("client", 0.0) / self.wall_s,
        }
        for name, seconds in self.cpu_s.items():
            out[f"{name}_us_per_token"] = seconds / tokens * 1e6
            out[f"{name}_us_per_message"] = seconds / max(1, self.messages) * 1e6
            out[f"{name}_us_per_request"] = seconds / max(1, len(self.streams)) * 1e6
        for name, grown in self.rss_growth.items():
            out[f"{name}_rss_kib_per_stream"] = grown / 1024 / max(1, len(self.streams))
        return out


async def run_cell(
    open_call: Callable[[int], Any],
    concurrency: int,
    min_streams: int,
    pids: dict[str, int],
) -> Cell:
    """`concurrency` streams at once (waves of them until `min_streams`),
    each from `open_call(i)`, with the CPU time of the processes in `pids`
    (and of this one, the client) and the machine's idle share over it."""
    names = list(pids)
    cpu0 = {n: cpu_seconds(pids[n]) for n in names} | {"client": cpu_seconds()}
    rss0 = {n: rss_bytes(pids[n]) for n in names}
    peak = dict(rss0)
    idle0, total0 = machine_idle()
    done = asyncio.Event()

    async def sample_rss() -> None:
        while not done.is_set():
            for n in names:
                peak[n] = max(peak[n], rss_bytes(pids[n]))
            await asyncio.sleep(RSS_SAMPLE_S)

    sampler = asyncio.create_task(sample_rss())
    start = time.perf_counter()
    streams: list[Stream] = []
    n = 0
    for _ in range(max(1, -(-min_streams // concurrency))):
        streams += await asyncio.gather(*(read(open_call(n + i)) for i in range(concurrency)))
        n += concurrency
    wall = time.perf_counter() - start
    done.set()
    await sampler
    idle1, total1 = machine_idle()
    cpu = {n: cpu_seconds(pids[n]) - cpu0[n] for n in names} | {
        "client": cpu_seconds() - cpu0["client"]
    }
    return Cell(
        streams,
        wall,
        cpu,
        {n: peak[n] - rss0[n] for n in names},
        (idle1 - idle0) / max(1, total1 - total0),
    )


# What a burst of new streams meets at a grpc.aio server with default options
# (found by this benchmark; reproduced with a bare grpc.aio server).
PENDING_LIMIT_NOTE = (
    "CANCELLED 'CANCELLED' before the first token: what a grpc.aio server answers calls"
    " past 1,000 received but not yet taken by its handlers (grpc.server.max_pending_requests,"
    " C-core's default), which a burst of streams opened at once reaches; a bare grpc.aio"
    " server loses 5-10% of 2,048 streams opened at once this way, none with the limit raised"
)


def failure_lines(failures: Counter[str]) -> list[str]:
    """Failed streams by system, cell and status, and what CANCELLED-at-once means."""
    if not failures:
        return ["failed streams: none"]
    lines = ["failed streams (all rounds):"]
    lines += [f"  {key}: {n}" for key, n in sorted(failures.items())]
    if any("CANCELLED" in key for key in failures):
        lines.append(f"  {PENDING_LIMIT_NOTE}")
    return lines


def count_failures(into: Counter[str], label: str, cell: Cell) -> None:
    for s in cell.streams:
        if s.code != "OK":
            when = f"after {s.tokens} tokens" if s.times else "before the first token"
            into[f"{label}: {s.code} {when}: {s.details[:80]!r}"] += 1


def cell_text(values: Sequence[float], fmt: str = ".1f") -> str:
    if not values:
        return "-"
    s = summary(values)
    if len(values) == 1:
        return f"{s['median']:{fmt}}"
    return f"{s['median']:{fmt}} [{s['min']:{fmt}}-{s['max']:{fmt}}]"


def flags(cells: Sequence[dict[str, float]]) -> str:
    """SAT: the machine had under 10% of its cores idle in some round; CLIENT:
    the load generator kept most of a core busy (its own lag is in the latencies)."""
    marks = []
    if any(c["idle_share"] < SATURATED_IDLE for c in cells):
        marks.append("SAT")
    if any(c["client_cores"] > CLIENT_BOUND_CORES for c in cells):
        marks.append("CLIENT")
    return ",".join(marks)


def rotated(items: Sequence[str], round_: int) -> Iterator[str]:
    """`items` starting from a different one each round, so none always goes first."""
    k = round_ % max(1, len(items))
    yield from list(items[k:]) + list(items[:k])
