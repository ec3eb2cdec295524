"""The closed-form tail bounds against exact sums: never below the exact
tail, and close to it where tests fire."""

from __future__ import annotations

import math

import pytest

from services.anomaly.detectors.stats import (
    log_binomial_tail,
    log_negative_binomial_tail,
    log_poisson_tail,
)


# Exact tails summed upwards (1 - the lower sum would cancel away the digits).
def poisson_sf(k: int, mean: float) -> float:
    return sum(
        math.exp(-mean + j * math.log(mean) - math.lgamma(j + 1)) for j in range(k, k + 2000)
    )


def binomial_sf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


def negative_binomial_sf(k: int, mean: float, dispersion: float) -> float:
    p = 1 / dispersion
    r = mean / (dispersion - 1)

    def pmf(j: int) -> float:
        return math.exp(
            math.lgamma(j + r) - math.lgamma(r) - math.lgamma(j + 1)
            + r * math.log(p) + j * math.log1p(-p)
        )  # fmt: skip

    return sum(pmf(j) for j in range(k, k + 20_000))


@pytest.mark.parametrize(("k", "mean"), [(10, 1.0), (30, 10.0), (6, 0.3), (60, 20.0)])
def test_poisson_tail_bounds_the_exact_tail_tightly(k: int, mean: float) -> None:
    exact = math.log(poisson_sf(k, mean))
    bound = log_poisson_tail(k, mean)
    assert exact <= bound + 1e-9
    assert bound - exact < math.log(2)


@pytest.mark.parametrize(("k", "n", "p"), [(100, 200, 0.01), (10, 200, 0.005), (5, 20, 0.02)])
def test_binomial_tail_bounds_the_exact_tail_tightly(k: int, n: int, p: float) -> None:
    exact = math.log(binomial_sf(k, n, p))
    bound = log_binomial_tail(k, n, p)
    assert exact <= bound + 1e-9
    assert bound - exact < math.log(2)


@pytest.mark.parametrize(("k", "mean", "dispersion"), [(20, 5.0, 2.0), (100, 10.0, 5.0)])
def test_negative_binomial_tail_bounds_the_exact_tail(
    k: int, mean: float, dispersion: float
) -> None:
    exact = math.log(negative_binomial_sf(k, mean, dispersion))
    bound = log_negative_binomial_tail(k, mean, dispersion)
    assert exact <= bound + 1e-9
    assert bound - exact < math.log(2)


def test_bursty_counts_have_heavier_tails_than_poisson() -> None:
    assert log_negative_binomial_tail(40, 10, 3) > log_poisson_tail(40, 10) + 10


def test_nothing_at_or_below_the_mean_is_in_the_upper_tail() -> None:
    assert log_poisson_tail(3, 5) == 0.0
    assert log_binomial_tail(1, 200, 0.01) == 0.0
    assert log_negative_binomial_tail(4, 5, 2) == 0.0
