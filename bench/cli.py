"""What the benchmarks' command lines share: the flags of a table of
concurrency cells, and running `main_async` on uvloop."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any


def cells_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser with the flags of `stats.in_waves` cells: rounds, the
    concurrencies of the table and the streams a cell runs at least."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--min-streams",
        type=int,
        default=8,
        help="streams per cell at least: below it a cell runs waves back to back",
    )
    return parser


def run_on_uvloop(
    main_async: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
    parser: argparse.ArgumentParser,
) -> None:
    """Parses the command line and runs `main_async` on uvloop, the loop
    `vllm serve` and the mesh's services use."""
    # Imported here: importing a benchmark for its helpers needs no uvloop.
    import uvloop

    uvloop.run(main_async(parser.parse_args()))
