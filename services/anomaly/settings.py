"""Anomaly settings: flags over `MAAS_ANOMALY_*` env over defaults.

Every detector threshold and window lives here, grouped by detector
(`MAAS_ANOMALY_RATE__SPIKE_MAX_P=1e-9`, `--rate.spike-max-p 1e-9`). Windows
are counted in buckets of `bucket_s` seconds of event time, so a replay runs
the same detectors faster than real time."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class RateSettings(BaseModel):
    """Request and token rate per tenant and per API key."""

    # A few hundred series, three counts each, two windows, 720 buckets an
    # hour: ~1.5M tests an hour, so this is ~0.15 false spikes an hour if the
    # counts were exactly what the model says.
    spike_max_p: float = Field(default=1e-7, gt=0, lt=1)
    # A significant rise smaller than this (x expected) is not worth a page.
    spike_min_ratio: float = Field(default=2.0, ge=1)
    # A spike holds at least this many bursts: one wide fan-out is not one.
    spike_min_bursts: int = Field(default=3, ge=1)
    # The level-shift CUSUM looks for a rise by this factor (rises of less
    # than ~1.6x, which slow waves of ordinary traffic reach, never add up)...
    shift_ratio: float = Field(default=2.5, gt=1)
    # ...and fires past this log-likelihood ratio (nats), above what
    # independent buckets would need: ordinary traffic wanders for minutes at
    # a time, and a shift worth an alert outlasts that.
    shift_threshold: float = Field(default=18.0, gt=0)
    # The CUSUM weighs evidence by how much whole blocks of this many buckets
    # (a minute) wander, not single buckets.
    shift_block_buckets: int = Field(default=12, ge=1)
    # Residuals beyond this many standard deviations move the baseline only
    # this much (Huber): a spike barely drags the baseline after it.
    residual_clip: float = Field(default=3.0, gt=0)
    # EWMA weight of the baseline per bucket: a half-life of ~140 buckets
    # (12 min), slow enough that a level shift cannot hide in it, fast enough
    # to follow a daily cycle.
    level_alpha: float = Field(default=0.005, gt=0, le=1)
    # EWMA weight of the dispersion and burst size: a half-life of ~30 min,
    # long enough to remember a tenant's occasional big fan-outs.
    dispersion_alpha: float = Field(default=0.002, gt=0, le=1)
    # The expected count never goes below this many effective events (a
    # request, or a burst of them) per bucket, so a few requests after a
    # quiet spell are not a spike.
    min_expected: float = Field(default=0.1, gt=0)
    # Each request's tokens count at most this many times the series' typical
    # request, so one huge request is not a token-rate spike.
    token_clip: float = Field(default=4.0, gt=1)
    # Requests of one series within this (and a tenth of its usual gap) of a
    # burst's first request are that burst: fan-outs are ordinary, and their
    # size is the unit of the series' noise.
    burst_gap_s: float = Field(default=0.25, ge=0)
    # Buckets, and requests, a new series must see before it can alert: a
    # quiet series needs the requests to know its bursts.
    warmup_buckets: int = Field(default=36, ge=1)
    warmup_requests: int = Field(default=50, ge=1)


class ErrorSettings(BaseModel):
    """Error-rate bursts per replica and per tenant."""

    # Status codes that are not a tenant's errors: success, and callers that went away.
    ignored_codes: frozenset[str] = frozenset({"OK", "CANCELLED"})
    # Status codes that are a replica's errors: the server's own failures.
    replica_codes: frozenset[str] = frozenset(
        {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED"}
    )
    # The windows tested besides the current bucket: a short one for busy
    # series, a long one for quiet ones whose short window holds too few requests.
    window_buckets: int = Field(default=6, ge=1)
    long_window_buckets: int = Field(default=24, ge=1)
    # One-sided binomial p-value against the baseline error rate.
    max_p: float = Field(default=1e-7, gt=0, lt=1)
    # The window's error rate must be at least this many times the baseline...
    min_ratio: float = Field(default=3.0, ge=1)
    # ...and at least this many errors: three failures are never a burst.
    min_errors: int = Field(default=4, ge=1)
    # Decay of the baseline's error and request counts per bucket.
    baseline_alpha: float = Field(default=0.01, gt=0, le=1)
    # Beta prior of the baseline: this rate, worth this many requests, so a
    # series with little history is judged against a sane rate.
    prior_rate: float = Field(default=0.01, gt=0, lt=1)
    prior_requests: float = Field(default=100.0, gt=0)
    # Buckets of baseline before judging, counted once the long window is full.
    warmup_buckets: int = Field(default=12, ge=0)


class LatencySettings(BaseModel):
    """Time-to-first-token and per-token latency regressions per replica."""

    # Requests pooled into one observation: fewer are too noisy to judge.
    min_batch: int = Field(default=20, ge=1)
    # A slow replica still gets judged after this many buckets.
    max_batch_buckets: int = Field(default=12, ge=1)
    # Standard errors (of the batch's mean log latency) above the baseline.
    z_threshold: float = Field(default=6.0, gt=0)
    # A significant slowdown smaller than this factor is not a regression.
    min_ratio: float = Field(default=1.5, ge=1)
    # EWMA weight of the baseline per batch.
    alpha: float = Field(default=0.03, gt=0, le=1)
    # Single requests and batch means beyond this many deviations count only this much.
    clip: float = Field(default=4.0, gt=0)
    warmup_batches: int = Field(default=10, ge=1)


class AuthFailureSettings(BaseModel):
    """Authentication-failure bursts per source address."""

    # A source nobody has seen yet is expected to fail this often per bucket.
    expected_per_bucket: float = Field(default=0.05, gt=0)
    # The longer of the two windows tested (the other is the current bucket).
    window_buckets: int = Field(default=6, ge=1)
    # Poisson p-value against the source's expected failures.
    max_p: float = Field(default=1e-7, gt=0, lt=1)
    # A handful of typos is never a burst.
    min_failures: int = Field(default=5, ge=1)
    # EWMA weight of a source's own failure rate per bucket.
    alpha: float = Field(default=0.01, gt=0, le=1)


class MixSettings(BaseModel):
    """Each tenant's traffic mix, scored by half-space trees."""

    # One observation of the mix pools at least this many requests over at
    # least this many buckets: a busy tenant's window still spans half an hour.
    min_requests: int = Field(default=16, ge=1)
    min_buckets: int = Field(default=6, ge=1)
    # Half-space trees: number, height and reference window (in observations).
    n_trees: int = Field(default=10, ge=1)
    height: int = Field(default=6, ge=1)
    window: int = Field(default=64, ge=4)
    # Weight of each observation in the per-feature mean and variance that
    # standardise the features: they move little within one window.
    scaler_alpha: float = Field(default=0.01, gt=0, le=1)
    # The trees split z-scores within +-this; beyond it everything is extreme.
    z_limit: float = Field(default=5.0, gt=0)
    # Anomaly score (0-1) at or above which an observation is unusual...
    score_threshold: float = Field(default=0.85, gt=0, le=1)
    # ...and this many unusual observations in a row raise an alert.
    consecutive: int = Field(default=3, ge=1)
    # Unusual observations are not learnt until this many come in a row: then
    # they are the tenant's new normal.
    relearn_after: int = Field(default=64, ge=1)
    # Observations before alerting: the trees' first window has no reference.
    warmup: int = Field(default=80, ge=1)
    # The trees take ~0.3 MiB per tenant, so they get their own, smaller cap.
    max_tenants: int = Field(default=500, ge=1)
    seed: int = 7


class AlertSettings(BaseModel):
    """How findings become alerts and reach watchers."""

    # A finding within this many seconds (event time) of the same kind and
    # series' last one updates that alert instead of opening a new one.
    merge_window_s: float = Field(default=120.0, ge=0)
    # Alerts kept for ListAlerts; the oldest go first.
    max_alerts: int = Field(default=10_000, ge=1)
    # Observed/expected at or above this is CRITICAL rather than WARNING.
    critical_ratio: float = Field(default=5.0, gt=1)
    # Alerts a slow watcher may fall behind by before its oldest are dropped.
    watch_queue: int = Field(default=256, ge=1)
    # ListAlerts answers at most this many.
    max_list: int = Field(default=1_000, ge=1)


class PolicyRule(BaseModel):
    """What to do about one kind of alert. `throttle` and `suspend` act on the
    key or tenant the alert is about, `eject` on the replica; other series
    (sources, say) get nothing."""

    action: Literal["none", "throttle", "suspend", "eject"] = "none"
    # How long the restriction or ejection lasts before it lifts by itself.
    duration_s: float = Field(default=900.0, gt=0, le=30 * 86_400)
    # Throttles: generations a minute allowed while it lasts.
    requests_per_minute: int = Field(default=60, ge=1)
    # Alerts below this severity are only reported.
    min_severity: Literal["warning", "critical"] = "warning"


def _default_rules() -> dict[str, PolicyRule]:
    throttle = PolicyRule(action="throttle", duration_s=900.0, requests_per_minute=60)
    return {
        # A leaked key hammering the service: slow it to a trickle for 15 minutes.
        "request_rate_spike": throttle,
        "token_rate_spike": throttle,
        # A replica failing many of its requests: out of rotation for a minute
        # (the router refuses to eject a model's last replica).
        "error_burst": PolicyRule(action="eject", duration_s=60.0),
    }


class PolicySettings(BaseModel):
    """Actions on alerts. Acting needs auth's and the router's addresses (and
    the admin token auth's restriction rpcs want); without them alerts are
    only reported. Suspension is off unless `allow_suspend`."""

    auth_address: str = ""
    router_address: str = ""
    admin_token: SecretStr = SecretStr("")
    allow_suspend: bool = False
    rules: dict[str, PolicyRule] = Field(default_factory=_default_rules)
    # Seconds each call to auth or the router may take.
    call_timeout_s: float = Field(default=5.0, gt=0)
    # Alert ids remembered as acted on (merged findings act once).
    remember_alerts: int = Field(default=10_000, ge=1)

    @property
    def enabled(self) -> bool:
        return bool(self.auth_address or self.router_address)


class AnomalySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_ANOMALY_", env_nested_delimiter="__", extra="forbid"
    )

    # The policy dials every auth replica, round robin (deploy/local/stack.py gives them all).
    balanced_address_fields: ClassVar[frozenset[str]] = frozenset({"policy.auth_address"})

    port: int = 50055
    # Detectors count in buckets of this much event time.
    bucket_s: float = Field(default=5.0, gt=0)
    # Series each detector tracks at most; the least recently seen go first.
    max_series: int = Field(default=20_000, ge=1)
    # A series without events for this long (event time) is forgotten.
    idle_s: float = Field(default=1800.0, gt=0)
    rate: RateSettings = RateSettings()
    errors: ErrorSettings = ErrorSettings()
    latency: LatencySettings = LatencySettings()
    auth_failures: AuthFailureSettings = AuthFailureSettings()
    mix: MixSettings = MixSettings()
    alerts: AlertSettings = AlertSettings()
    policy: PolicySettings = PolicySettings()
