"""Percentiles, median with range over repetitions, and the results file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def machine() -> dict[str, Any]:
    """What the numbers were measured on: the CPU engine's speed depends on
    the vector units more than on the clock (without AVX-512 it ran 4-8x slower)."""
    model, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and not model:
                model = value.strip()
            elif name.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")) or f == "fma")
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "cpu_model": model,
        "vector_extensions": vector,
    }


async def in_waves(
    wave: Callable[[int], Awaitable[Sequence[T]]], concurrency: int, min_streams: int
) -> list[T]:
    """`wave(concurrency)` back to back until at least `min_streams` results:
    one stream alone is one TTFT sample, and a median of a few single
    samples is mostly noise."""
    results: list[T] = []
    for _ in range(max(1, -(-min_streams // concurrency))):
        results += await wave(concurrency)
    return results


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def median_table(
    table: dict[str, dict[str, dict[str, float]]], metrics: Sequence[str], label: str
) -> list[str]:
    """Rows of `table` (row -> metric -> summary()) as "median [min-max]"
    cells under a header naming `label` and each metric, then a rule."""
    width = max(12, len(label), *(len(row) for row in table))
    header = f"{label:<{width}} " + " ".join(f"{m:>24}" for m in metrics)
    lines = [header, "-" * len(header)]
    for row, cells in table.items():
        lines.append(
            f"{row:<{width}} "
            + " ".join(
                f"{x['median']:.3f} [{x['min']:.3f}-{x['max']:.3f}]".rjust(24)
                for x in (cells[m] for m in metrics)
            )
        )
    return lines


def write_results(name: str, report: str, **fields: Any) -> Path:
    """Prints the table and writes it with the data to bench/results/NAME.json."""
    print("\n" + report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **fields,
        "table": report,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwritten to {out}")
    return out
