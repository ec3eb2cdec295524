"""Each tenant's traffic mix: what it sends, whatever the volume.

A tenant's requests are pooled into observations of at least `min_requests`
and `min_buckets` (so a window of observations spans a while even for a busy
tenant), each described by rate-free features: mean log prompt tokens,
mean log completion tokens of the requests that completed (a failure's
empty completion is the error detector's business, not a change of mix),
the share going to the tenant's usual model, and the share of its busiest
API key. Each feature is standardised against the tenant's own slowly
fading mean and variance, and river's
half-space trees, spanning a fixed range of z-scores, score the observation
against the previous window of observations; a run of high scores is an
alert. Scaling with statistics that change little within a window keeps the
trees' reference masses meaningful (a min-max scaler would stretch them as
soon as an outlier moved the range), and scaling before learning puts a new
shape outside what the trees have seen."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, cast

from river.anomaly import HalfSpaceTrees
from river.preprocessing import AdaptiveStandardScaler

from services.anomaly.detectors.base import Finding
from services.anomaly.detectors.series import CountsSeries, SeriesTable
from services.anomaly.events import REQUEST, RequestEvent
from services.anomaly.settings import MixSettings

FEATURES = {
    "prompt": "prompt tokens (mean log)",
    "completion": "completion tokens (mean log)",
    "model": "share of its usual model",
    "key": "share of its busiest key",
}
# Keys and models counted per observation; past these, a tenant is not
# dominated by one anyway.
MAX_KEYS = 32
MAX_MODELS = 8
# Per-observation decay of the model counts that say which model is usual.
MODEL_DECAY = 0.05
# Statuses of requests that ran to their end.
COMPLETED = frozenset({"", "OK"})
# EWMA weight of the typical score an alert is compared with.
SCORE_ALPHA = 0.05


class _Scaler(Protocol):
    """The typed view of river's (untyped) AdaptiveStandardScaler that this module uses."""

    def learn_one(self, x: dict[str, float]) -> None: ...
    def transform_one(self, x: dict[str, float]) -> dict[str, float]: ...


class _Trees(Protocol):
    """The typed view of river's (untyped) HalfSpaceTrees that this module uses."""

    def learn_one(self, x: dict[str, float]) -> None: ...
    def score_one(self, x: dict[str, float]) -> float: ...


@dataclass(slots=True)
class _Tenant:
    bucket: int
    scaler: _Scaler
    trees: _Trees
    # Decayed request counts by model, over past observations.
    model_counts: dict[str, float] = field(default_factory=dict)
    opened: int = -1
    n: int = 0
    prompt: float = 0.0
    completion: float = 0.0
    completed: int = 0
    # The last observation's completion feature: an observation where nothing
    # completed says nothing new about it.
    last_completion: float = 0.0
    models: dict[str, int] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)
    seen: int = 0
    streak: int = 0
    typical_score: float = 0.0


class TrafficMixDetector(CountsSeries[_Tenant]):
    KIND = "traffic_mix"

    def __init__(self, settings: MixSettings, *, bucket_s: float, idle_buckets: int) -> None:
        self._s = settings
        self._bucket_s = bucket_s
        self._table: SeriesTable[_Tenant] = SeriesTable(
            settings.max_tenants, idle_buckets, self._new_tenant
        )

    def _new_tenant(self, bucket: int) -> _Tenant:
        s = self._s
        trees = HalfSpaceTrees(
            n_trees=s.n_trees,
            height=s.height,
            window_size=s.window,
            limits={name: (-s.z_limit, s.z_limit) for name in FEATURES},
            seed=s.seed,
        )
        return _Tenant(
            bucket=bucket,
            # river leaves this constructor unannotated.
            scaler=cast(_Scaler, AdaptiveStandardScaler(s.scaler_alpha)),  # type: ignore[no-untyped-call]
            trees=cast(_Trees, trees),
        )

    def observe(self, event: RequestEvent, at: float, bucket: int) -> list[Finding]:
        if event.kind != REQUEST or not event.tenant_id:
            return []
        findings: list[Finding] = []
        series = f"tenant:{event.tenant_id}"
        tenant = self._table.get(series, bucket)
        if tenant.bucket < bucket:
            self._close(series, event.tenant_id, tenant, bucket, at, findings)
        if tenant.n == 0:
            tenant.opened = bucket
        tenant.n += 1
        tenant.prompt += math.log1p(event.prompt_tokens)
        if event.status_code in COMPLETED:
            tenant.completed += 1
            tenant.completion += math.log1p(event.completion_tokens)
        _count(tenant.models, event.model, MAX_MODELS)
        _count(tenant.keys, event.key_id, MAX_KEYS)
        return findings

    def advance(self, bucket: int) -> list[Finding]:
        findings: list[Finding] = []
        at = bucket * self._bucket_s
        self._table.close_before(
            bucket,
            lambda series, tenant: self._close(
                series, series.removeprefix("tenant:"), tenant, bucket, at, findings
            ),
        )
        return findings

    def _close(
        self,
        series: str,
        tenant_id: str,
        tenant: _Tenant,
        bucket: int,
        at: float,
        out: list[Finding],
    ) -> None:
        tenant.bucket = bucket
        n = tenant.n
        if n < self._s.min_requests or bucket - tenant.opened < self._s.min_buckets:
            return
        if tenant.completed:
            tenant.last_completion = tenant.completion / tenant.completed
        x = {
            "prompt": tenant.prompt / n,
            "completion": tenant.last_completion,
            "model": self._usual_model_share(tenant),
            "key": max(tenant.keys.values()) / n,
        }
        tenant.n, tenant.prompt, tenant.completion, tenant.completed = 0, 0.0, 0.0, 0
        tenant.keys.clear()
        tenant.models.clear()
        finding = self._score(tenant, x)
        if finding is not None:
            score, detail = finding
            out.append(
                Finding(
                    kind=self.KIND,
                    series=series,
                    tenant_id=tenant_id,
                    at=at,
                    score=score,
                    observed=score,
                    expected=tenant.typical_score,
                    detail=detail,
                )
            )

    @staticmethod
    def _usual_model_share(tenant: _Tenant) -> float:
        """The observation's share of the model the tenant used most so far
        (then counts the observation in)."""
        counts = tenant.model_counts
        usual = max(counts, key=counts.__getitem__) if counts else ""
        share = tenant.models.get(usual, 0) / tenant.n if usual else 1.0
        for model in counts:
            counts[model] *= 1 - MODEL_DECAY
        for model, count in tenant.models.items():
            if model in counts or len(counts) < MAX_MODELS:
                counts[model] = counts.get(model, 0.0) + count
        return share

    def _score(self, tenant: _Tenant, x: dict[str, float]) -> tuple[float, str] | None:
        s = self._s
        z = tenant.scaler.transform_one(x)
        score = tenant.trees.score_one(z)
        # An unusual observation is learnt neither by the trees nor by the
        # scale it is judged on: an anomaly must not become the reference the
        # next one of its shape is judged against. A change that lasts
        # `relearn_after` observations in a row is the new normal, and is learnt.
        unusual = score >= s.score_threshold and tenant.seen >= s.warmup
        if not unusual or tenant.streak >= s.relearn_after:
            tenant.trees.learn_one(z)
            tenant.scaler.learn_one(x)
        tenant.seen += 1
        if tenant.seen <= s.warmup:
            tenant.typical_score += (score - tenant.typical_score) / tenant.seen
            return None
        if score < s.score_threshold:
            tenant.streak = 0
            tenant.typical_score += SCORE_ALPHA * (score - tenant.typical_score)
            return None
        tenant.streak += 1
        if tenant.streak < s.consecutive:
            return None
        # The feature furthest from the tenant's usual says what changed.
        worst = max(z, key=lambda name: abs(z[name]))
        return score, f"{FEATURES[worst]} {x[worst]:.2f}, {z[worst]:+.1f} sd from usual"


def _count(counts: dict[str, int], name: str, cap: int) -> None:
    if name in counts or len(counts) < cap:
        counts[name] = counts.get(name, 0) + 1
