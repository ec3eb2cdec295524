"""What a non-service module run in containers declares about itself (the
health check, replica sync), as services declare a ServiceSpec: the deploy
checks read it instead of running the module's `--help`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommandSpec:
    # What `python -m` runs.
    module: str
    # The `--flags` it takes.
    flags: frozenset[str] = frozenset()
    # The variables it reads.
    environment: frozenset[str] = frozenset()
