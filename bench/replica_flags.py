"""The inference replicas a router benchmark runs over, from its command
line: CPU-engine replicas on the tiny local model (the default), or
simulated ones (`--engine sim --replicas 8 --sim-profile NAME`) that imitate
a GPU replica at little CPU cost, so the router is what gets measured."""

from __future__ import annotations

import argparse
import os
from contextlib import AsyncExitStack
from pathlib import Path

from bench import mesh
from services.inference.sim_profiles import DEFAULT_PROFILE, PROFILES, SimProfile

# A simulated replica stands for a machine of its own, with its own cores for
# its gRPC server; here they all share two. Each streams at most this many
# messages a second (the service merges tokens in between; the first message
# never waits, so time to first token is untouched), so 8 of them stream 800
# a second: at 250 each the replicas alone took a core of this machine's two,
# and the router and the clients were left short of CPU.
SIM_MESSAGES_PER_S = 100


def add_flags(parser: argparse.ArgumentParser, *, replicas: int, max_num_seqs: int | None) -> None:
    parser.add_argument("--engine", choices=("vllm", "sim"), default="vllm")
    parser.add_argument("--replicas", type=int, default=replicas)
    parser.add_argument(
        "--sim-profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES),
        help="what a simulated replica imitates (services/inference/sim_profiles.py)",
    )  # fmt: skip
    parser.add_argument(
        "--max-num-seqs", type=int, default=max_num_seqs,
        help="requests each replica batches at once",
    )  # fmt: skip
    parser.add_argument(
        "--sim-messages-per-s", type=float, default=SIM_MESSAGES_PER_S,
        help="messages a simulated replica streams a second, over all its streams",
    )  # fmt: skip


def profile(args: argparse.Namespace) -> SimProfile | None:
    return PROFILES[args.sim_profile] if args.engine == "sim" else None


def results_name(base: str, args: argparse.Namespace) -> str:
    """The results file: the CPU engine's runs keep their old name."""
    return f"{base}_sim" if args.engine == "sim" else base


def describe(args: argparse.Namespace) -> str:
    if args.engine == "sim":
        return (
            f"{args.replicas} simulated replicas ({args.sim_profile}, max_num_seqs "
            f"{args.max_num_seqs}, {args.sim_messages_per_s:.0f} messages/s each)"
        )
    return f"{args.replicas} CPU-engine replicas (tiny llama, max_num_seqs {args.max_num_seqs})"


async def start(
    stack: AsyncExitStack, args: argparse.Namespace, name: str
) -> tuple[list[str], str]:
    """The replicas' addresses and the model they serve, running until `stack` closes."""
    if args.engine == "sim":
        # The service reads it from the environment; only inference services take this prefix.
        os.environ["MAAS_INFERENCE_STREAM_MESSAGES_PER_S"] = str(args.sim_messages_per_s)
        model: Path | str = "sim-" + args.sim_profile
    else:
        from local_models.tiny_llama import build_tiny_model

        model = build_tiny_model(mesh.REPO / ".maas" / "models" / "tiny-llama")
    replicas = [
        await stack.enter_async_context(
            mesh.inference(
                model,
                f"{name}_replica{i}",
                args.max_num_seqs,
                engine=args.engine,
                sim_profile=args.sim_profile if args.engine == "sim" else None,
            )
        )
        for i in range(args.replicas)
    ]
    return replicas, await mesh.model_name(replicas[0])
