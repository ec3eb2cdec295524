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
    # This process and its descendants alive now, by process: (role, ticks).
    tree: dict[int, tuple[str, int]]
    waited_us: int | None  # PSI "some": time at least one runnable task had no core

    @classmethod
    def now(cls) -> CpuSample:
        return cls(time.perf_counter(), _busy_ticks(), _tree(os.getpid()), _cpu_waited_us())


# A process's role, by what its command line runs (the first that matches).
ROLES = (
    ("services.router", "router"),
    ("services.inference", "replicas"),
    ("services.", "services"),
    ("gateway", "gateway"),
    ("multiprocessing", "load_clients"),
)


def use_between(start: CpuSample, end: CpuSample, prefix: str) -> dict[str, float]:
    """Cores busy on the machine and in the tree (in cores, of os.cpu_count()),
    and the share of the stretch some task waited for a core. The tree's
    ticks are of processes alive at both ends (ones ended between are lost)."""
    seconds = max(end.at - start.at, 1e-9)
    by_role: dict[str, int] = {}
    for pid, (role, ticks) in end.tree.items():
        if pid in start.tree:
            by_role[role] = by_role.get(role, 0) + ticks - start.tree[pid][1]
    out = {
        f"{prefix}_machine_busy_cores": (end.busy_ticks - start.busy_ticks) / HZ / seconds,
        f"{prefix}_bench_tree_cores": sum(by_role.values()) / HZ / seconds,
    }
    for role, ticks in sorted(by_role.items()):
        out[f"{prefix}_cores_{role}"] = ticks / HZ / seconds
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


def _tree(root: int) -> dict[int, tuple[str, int]]:
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
    tree: dict[int, tuple[str, int]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        tree[pid] = (_role(pid) if pid != root else "bench", ticks.get(pid, 0))
        todo += children.get(pid, [])
    return tree


def _role(pid: int) -> str:
    try:
        cmdline = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "other"
    return next((role for needle, role in ROLES if needle in cmdline), "other")
