"""What a simulated replica costs: CPU seconds per simulated token, in process
(engine plus the reader of every stream), at 1, 64 and 512 concurrent
streams, and how closely its steps keep to the profile's timing.

    python -m bench.sim_engine [--profile llama-3.1-8b-h100] [--rounds 3]

Stream counts take turns within each round (interleaved); each is reported
as the median and range over the rounds."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from typing import Any

import uvloop

from bench.stats import summary, write_results
from services.inference.engine import GenerationInput, SamplingOptions
from services.inference.sim_engine import SimEngine
from services.inference.sim_profiles import DEFAULT_PROFILE, PROFILES

STREAMS = (1, 64, 512)
# Long enough that steady decoding, not the prefill, dominates each run.
TOKENS = 128
# About 100 tokens of prompt, distinct per stream (no prefix hits between them).
PROMPT = "Summarize the following report in three sentences. " * 8


@dataclass
class Run:
    streams: int
    tokens: int
    steps: int
    cpu_s: float
    wall_s: float
    profiled_s: float

    @property
    def cpu_us_per_token(self) -> float:
        return self.cpu_s / self.tokens * 1e6

    @property
    def cpu_us_per_step(self) -> float:
        return self.cpu_s / self.steps * 1e6

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def slip(self) -> float:
        """Wall time over the profile's: 1.0 means the simulator kept its pace."""
        return self.wall_s / self.profiled_s


async def one_run(profile: str, streams: int) -> Run:
    options = SamplingOptions(max_tokens=TOKENS, ignore_eos=True)

    async def stream(engine: SimEngine, i: int) -> int:
        count = 0
        async for delta in engine.generate(f"r{i}", GenerationInput(f"{i} {PROMPT}"), options):
            count += len(delta.token_ids)
        return count

    async with SimEngine(PROFILES[profile]) as engine:
        cpu, wall = time.process_time(), time.perf_counter()
        counts = await asyncio.gather(*(stream(engine, i) for i in range(streams)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        assert sum(counts) == streams * TOKENS
        return Run(streams, sum(counts), engine.steps, cpu, wall, engine.profiled_s)


def report(profile: str, runs: dict[int, list[Run]]) -> tuple[str, list[dict[str, Any]]]:
    def cell(values: list[float], fmt: str) -> str:
        s = summary(values)
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"

    lines = [
        f"Simulated engine, profile {profile}: {TOKENS} tokens a stream, median (range)"
        f" over {len(next(iter(runs.values())))} rounds",
        "| streams | CPU us/token | CPU us/step | tokens/s | wall / profiled time |",
        "|---|---|---|---|---|",
    ]
    rows = []
    for streams, rs in runs.items():
        lines.append(
            f"| {streams} | {cell([r.cpu_us_per_token for r in rs], '.1f')}"
            f" | {cell([r.cpu_us_per_step for r in rs], '.0f')}"
            f" | {cell([r.tokens_per_s for r in rs], ',.0f')}"
            f" | {cell([r.slip for r in rs], '.3f')} |"
        )
        rows.append(
            {
                "streams": streams,
                "cpu_us_per_token": summary([r.cpu_us_per_token for r in rs]),
                "cpu_us_per_step": summary([r.cpu_us_per_step for r in rs]),
                "tokens_per_s": summary([r.tokens_per_s for r in rs]),
                "wall_over_profiled": summary([r.slip for r in rs]),
                "runs": [vars(r) for r in rs],
            }
        )
    return "\n".join(lines), rows


async def main(profile: str, rounds: int) -> None:
    runs: dict[int, list[Run]] = {n: [] for n in STREAMS}
    for _ in range(rounds):
        for n in STREAMS:
            runs[n].append(await one_run(profile, n))
    table, rows = report(profile, runs)
    write_results("sim_engine", table, profile=profile, tokens_per_stream=TOKENS, rows=rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.run(main(args.profile, args.rounds))
