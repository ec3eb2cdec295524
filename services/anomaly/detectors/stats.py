"""Tail probabilities for the count tests, in closed form.

Both are upper bounds on the exact one-sided tail, within a factor
1 / (1 - r) where r bounds the ratio of successive probabilities past the
observed count: tight exactly where a test can fire (far in the tail), so
the tests err towards silence and cost one `lgamma` each."""

from __future__ import annotations

import math


def log_poisson_tail(count: float, mean: float) -> float:
    """ln P(X >= count) for X ~ Poisson(mean), bounded from above; 0 at or below the mean.

    `count` may be fractional (quasi-Poisson counts in units of dispersion)."""
    if count <= mean or mean <= 0:
        return 0.0 if count <= mean else -math.inf
    log_pmf = count * math.log(mean) - mean - math.lgamma(count + 1)
    ratio = mean / (count + 1)
    return min(0.0, log_pmf - math.log1p(-ratio))


def log_negative_binomial_tail(count: float, mean: float, dispersion: float) -> float:
    """ln P(X >= count) for a negative binomial with this mean and variance
    `dispersion` x mean (Poisson when the dispersion is at most 1), bounded
    from above; 0 where `count` is not in the upper tail. Its tail decays
    geometrically, like counts made of bursts of random size do."""
    if dispersion <= 1:
        return log_poisson_tail(count, mean)
    if count <= mean or mean <= 0:
        return 0.0 if count <= mean else -math.inf
    p = 1 / dispersion
    r = mean / (dispersion - 1)
    ratio = (1 - p) * max(1.0, (count + r) / (count + 1))
    if ratio >= 1:
        return 0.0
    log_pmf = (
        math.lgamma(count + r)
        - math.lgamma(r)
        - math.lgamma(count + 1)
        + r * math.log(p)
        + count * math.log1p(-p)
    )
    return min(0.0, log_pmf - math.log1p(-ratio))


def log_binomial_tail(k: int, n: int, p: float) -> float:
    """ln P(X >= k) for X ~ Binomial(n, p), bounded from above; 0 outside the upper tail."""
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    ratio = (n - k) / (k + 1) * p / (1 - p)
    if ratio >= 1:
        return 0.0
    log_pmf = (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    return min(0.0, log_pmf - math.log1p(-ratio))


def neg_log10(log_p: float) -> float:
    """A natural-log p-value as the alert score, -log10 p (capped: p can underflow)."""
    return min(-log_p / math.log(10), 300.0)


def clip(value: float, limit: float) -> float:
    return max(-limit, min(limit, value))
