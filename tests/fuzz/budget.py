"""How long the fuzzers run. In CI (`make test`) a fixed, small number of
examples, derandomized, so every run tries the same inputs; `make fuzz` sets
MAAS_FUZZ_EXAMPLES for a longer, random run (MAAS_FUZZ_SEED replays one).
Nothing is written to a Hypothesis database: no `.hypothesis/` in the repo."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, seed, settings

F = TypeVar("F", bound=Callable[..., Any])

LONG_RUN = "MAAS_FUZZ_EXAMPLES" in os.environ


def fuzz_settings(ci_examples: int) -> Callable[[F], F]:
    """`@fuzz_settings(n)` on a `@given` test: n examples in CI, the
    environment's count in a long run."""
    examples = int(os.environ["MAAS_FUZZ_EXAMPLES"]) if LONG_RUN else ci_examples
    configured = settings(
        max_examples=examples,
        derandomize=not LONG_RUN,
        database=None,
        # Every example is a real call to a real mesh: slow is normal, not a bug in the strategy.
        deadline=None,
        suppress_health_check=list(HealthCheck),
        # No explain phase: it re-runs passing examples against the mesh to guess at causes.
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        print_blob=True,
    )

    def apply(test: F) -> F:
        test = configured(test)
        replay = os.environ.get("MAAS_FUZZ_SEED")
        if LONG_RUN and replay:
            test = seed(int(replay))(test)
        return test

    return apply
