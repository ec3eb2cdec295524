"""Where a machine's CPU went over a stretch of a benchmark (Linux /proc):
how busy its cores were, how much of that was this benchmark's own process
tree (its servers and load clients), and how long runnable tasks waited for
a core (pressure stall information). A latency that neither queue explains
is CPU starvation when the wait is high; whose, the tree's share tells."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    at: float
    busy_ticks: int  # all cores, since boot
    tree_ticks: int  # this process and its descendants alive now
    waited_us: int | None  # PSI "some": time at least one runnable task had no core

    @classmethod
    def now(cls) -> CpuSample:
        return cls(time.perf_counter(), _busy_ticks(), _tree_ticks(os.getpid()), _cpu_waited_us())


def use_between(start: CpuSample, end: CpuSample, prefix: str) -> dict[str, float]:
    """Cores busy on the machine and in the tree (in cores, of os.cpu_count()),
    and the share of the stretch some task waited for a core. The tree's
    ticks are of processes alive at both ends (ones ended between are lost)."""
    seconds = max(end.at - start.at, 1e-9)
    out = {
        f"{prefix}_machine_busy_cores": (end.busy_ticks - start.busy_ticks) / HZ / seconds,
        f"{prefix}_bench_tree_cores": max(0, end.tree_ticks - start.tree_ticks) / HZ / seconds,
    }
    if start.waited_us is not None and end.waited_us is not None:
        out[f"{prefix}_cpu_wait_share"] = (end.waited_us - start.waited_us) / 1e6 / seconds
    return out


def _busy_ticks() -> int:
    try:
        fields = (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0
    values = [int(v) for v in fields]
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    return sum(values[:8]) - values[3] - values[4]


def _cpu_waited_us() -> int | None:
    try:
        some = (PROC / "pressure" / "cpu").read_text().split("\n", 1)[0]
    except OSError:
        return None
    return int(some.rsplit("total=", 1)[1])


def _tree_ticks(root: int) -> int:
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name (in parentheses) may hold spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime, stime
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total
