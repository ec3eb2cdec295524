"""How well the anomaly detectors find labelled anomalies, next to static thresholds.

A seeded generator makes several simulated hours of traffic for many tenants
(rates lognormal across tenants, 0.05-6 req/s): a daily wave (period
`--day-hours`, 30-60% deep) with a per-tenant phase, rates that wander
(20%, with a memory of about two minutes), arrivals in clumps (agents
fanning out: geometric, up to 2.5 requests on average, within 0.2 s),
lognormal prompt and completion sizes, several replicas with their own
latency, a background of errors and cancellations, and a trickle of failed
logins. Event times are arrival times. Into it go labelled anomalies of
every kind the service looks for:

  rate_spike          one API key suddenly sends 5-15x its tenant's rate
                      (at least 2 req/s more) for 30-120 s
  level_shift         a tenant's whole traffic rises 2.5-4x for 10-20 min
  error_burst         15-50% of a replica's requests, or 30-80% of a
                      tenant's, fail for 1-3 min
  latency_regression  a replica's TTFT and/or time per token grows 2-4x
                      for 5-15 min
  auth_failure_burst  a new address fails 0.5-5 logins/s for 1-5 min
  mix_change          a tenant's prompts grow 3-6x, completions shrink 3-5x
                      and most requests go to a model it never used, at the
                      same request rate, for 10-20 min

The events replay through AnomalyCore in event time (no gRPC, no clock), and
through a static-threshold baseline: one global limit per statistic over
30 s windows, set at 1.2x the largest value any series reached during a
clean calibration hour (another seed). A clean run (the same traffic, no
anomalies) gives false alerts per simulated hour.

Scoring. An alert is true when it is about a series an injected anomaly
affects (the tenant and its keys, the replica, the source; a replica's
error burst also explains tenants' error bursts) and first fires between
its start and `--grace` seconds after its end. An anomaly is found when an
alert of its own kind (rate kinds for rate anomalies, traffic_mix for mix
changes, ...) fires on its series in that window; the delay is from its
start to that firing. Precision per row counts the alerts of that row's
kinds. Injections start after `--warmup-minutes`, as a running service
would have warmed up long before.

    .venv/bin/python -m bench.anomaly_eval [--hours 6] [--tenants 50] [--per-kind 12]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bench.stats import percentile, write_results
from services.anomaly.alerts import Alert, AlertBook
from services.anomaly.core import AnomalyCore
from services.anomaly.detectors.base import Finding
from services.anomaly.events import AUTH_FAILURE, REQUEST, RequestEvent
from services.anomaly.settings import AlertSettings, AnomalySettings

EPOCH = 1_800_000_000.0
MODELS = ("llama-3.1-8b", "llama-3.1-70b", "mistral-7b", "qwen-2.5-14b", "phi-3-mini")
REPLICAS = tuple(f"10.0.{i}.10:8000" for i in range(4))
INJECTED = (
    "rate_spike",
    "level_shift",
    "error_burst",
    "latency_regression",
    "auth_failure_burst",
    "mix_change",
)
RATE_KINDS = frozenset(
    {"request_rate_spike", "token_rate_spike", "request_rate_shift", "token_rate_shift"}
)
# Which alert kinds find an injected anomaly, and which belong to its row for precision.
DETECTS: dict[str, frozenset[str]] = {
    "rate_spike": RATE_KINDS,
    "level_shift": RATE_KINDS,
    "error_burst": frozenset({"error_burst"}),
    "latency_regression": frozenset({"ttft_regression", "token_latency_regression"}),
    "auth_failure_burst": frozenset({"auth_failure_burst"}),
    "mix_change": frozenset({"traffic_mix"}),
}
ROW_KINDS: dict[str, frozenset[str]] = {
    "rate_spike": frozenset({"request_rate_spike", "token_rate_spike"}),
    "level_shift": frozenset({"request_rate_shift", "token_rate_shift"}),
    **{k: v for k, v in DETECTS.items() if k not in ("rate_spike", "level_shift")},
}


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    rate: float  # requests per second before the daily wave
    amplitude: float
    phase: float
    keys: tuple[str, ...]
    key_weights: tuple[float, ...]
    model: str
    other_model: str
    model_share: float
    prompt_mu: float
    completion_mu: float
    clump: float  # mean requests per arrival
    error_rate: float


@dataclass(frozen=True)
class Injection:
    kind: str
    start: float
    end: float
    series: str  # the series it is about: tenant:, replica: or source:
    magnitude: float
    magnitude2: float = 1.0
    key: str = ""
    # Every series it affects: an alert on one of these in its window is true.
    affected: frozenset[str] = frozenset()
    # Series prefixes whose alerts of the given kinds it also explains.
    explains_prefix: tuple[tuple[str, frozenset[str]], ...] = ()


@dataclass
class Firing:
    alert_id: str
    kind: str
    series: str
    at: float
    first: float


@dataclass
class Traffic:
    tenants: list[Tenant]
    injections: list[Injection]
    hours: float
    day_hours: float
    seed: int


def make_tenants(n: int, rng: random.Random) -> list[Tenant]:
    tenants = []
    for i in range(n):
        keys = tuple(f"t{i}-k{j}" for j in range(rng.randint(1, 4)))
        weights = tuple(rng.uniform(0.2, 1.0) for _ in keys)
        model, other = rng.sample(MODELS[:4], 2)
        tenants.append(
            Tenant(
                tenant_id=f"t{i}",
                rate=min(max(math.exp(rng.gauss(math.log(0.5), 1.0)), 0.05), 6.0),
                amplitude=rng.uniform(0.3, 0.6),
                phase=rng.uniform(0, 2 * math.pi),
                keys=keys,
                key_weights=weights,
                model=model,
                other_model=other,
                model_share=rng.uniform(0.8, 1.0),
                prompt_mu=math.log(rng.uniform(100, 1500)),
                completion_mu=math.log(rng.uniform(50, 400)),
                clump=rng.uniform(1.0, 2.5),
                error_rate=rng.uniform(0.0, 0.02),
            )
        )
    return tenants


def tenant_series(t: Tenant) -> frozenset[str]:
    return frozenset({f"tenant:{t.tenant_id}", *(f"key:{k}" for k in t.keys)})


def draw_injection(
    kind: str, n: int, tenants: list[Tenant], rng: random.Random
) -> tuple[Injection, float]:
    """The `n`th anomaly of `kind` (its start still to be placed), and its duration."""
    # Error bursts and mix changes need a tenant with enough requests to show them.
    active = [t for t in tenants if t.rate >= 0.3]
    if kind == "rate_spike":
        t = rng.choice(tenants)
        duration, series = rng.uniform(30, 120), f"tenant:{t.tenant_id}"
        magnitude, key = rng.uniform(5, 15), rng.choice(t.keys)
        return Injection(
            kind, 0, 0, series, magnitude, key=key, affected=tenant_series(t)
        ), duration
    if kind == "level_shift":
        t = rng.choice(tenants)
        duration, series = rng.uniform(600, 1200), f"tenant:{t.tenant_id}"
        return Injection(
            kind, 0, 0, series, rng.uniform(2.5, 4.0), affected=tenant_series(t)
        ), duration
    if kind == "error_burst":
        duration = rng.uniform(60, 180)
        if rng.random() < 0.5:
            series = f"replica:{rng.choice(REPLICAS)}"
            # A failing replica fails some of every tenant's requests too.
            explains = (("tenant:", frozenset({"error_burst"})),)
            magnitude = rng.uniform(0.15, 0.5)
            affected = frozenset({series})
            return Injection(
                kind, 0, 0, series, magnitude, affected=affected, explains_prefix=explains
            ), duration
        t = rng.choice(active)
        series = f"tenant:{t.tenant_id}"
        return Injection(
            kind, 0, 0, series, rng.uniform(0.3, 0.8), affected=tenant_series(t)
        ), duration
    if kind == "latency_regression":
        series = f"replica:{rng.choice(REPLICAS)}"
        duration = rng.uniform(300, 900)
        which = rng.choice(("ttft", "per_token", "both"))
        ttft = rng.uniform(2, 4) if which != "per_token" else 1.0
        per_token = rng.uniform(2, 4) if which != "ttft" else 1.0
        return Injection(
            kind, 0, 0, series, ttft, per_token, affected=frozenset({series})
        ), duration
    if kind == "auth_failure_burst":
        series = f"source:ipv4:192.0.2.{n + 1}"
        duration = rng.uniform(60, 300)
        return Injection(
            kind, 0, 0, series, rng.uniform(0.5, 5.0), affected=frozenset({series})
        ), duration
    t = rng.choice(active)
    duration, series = rng.uniform(600, 1200), f"tenant:{t.tenant_id}"
    prompt, completion = rng.uniform(3, 6), rng.uniform(0.2, 0.35)
    return Injection(kind, 0, 0, series, prompt, completion, affected=tenant_series(t)), duration


def make_injections(
    tenants: list[Tenant], hours: float, per_kind: int, warmup_s: float, rng: random.Random
) -> list[Injection]:
    """`per_kind` anomalies of each kind, starting after the warm-up; two on the
    same tenant, replica or source are at least 10 minutes apart."""
    horizon = hours * 3600
    busy: dict[str, list[tuple[float, float]]] = defaultdict(list)
    out: list[Injection] = []
    for kind in INJECTED:
        while len([j for j in out if j.kind == kind]) < per_kind:
            injection, duration = draw_injection(kind, len(out) % per_kind, tenants, rng)
            spans = busy[injection.series]
            for _ in range(200):
                start = rng.uniform(warmup_s, horizon - duration - 120)
                if all(start > e + 600 or start + duration + 600 < s for s, e in spans):
                    spans.append((start, start + duration))
                    out.append(replace(injection, start=start, end=start + duration))
                    break
    return sorted(out, key=lambda i: i.start)


def generate(traffic: Traffic, injected: bool) -> Iterator[RequestEvent]:
    """The traffic's events in time order; the same base traffic with or without injections."""
    seed = traffic.seed
    base = random.Random(seed)
    inj = random.Random(seed + 1)
    base_np = np.random.default_rng(seed)
    inj_np = np.random.default_rng(seed + 2)
    tenants = traffic.tenants
    n = len(tenants)
    rates = np.array([t.rate for t in tenants])
    amplitude = np.array([t.amplitude for t in tenants])
    phase = np.array([t.phase for t in tenants])
    clump = np.array([t.clump for t in tenants])
    # Extra requests per arrival are geometric with mean clump - 1.
    clump_rate = [math.log(t.clump / (t.clump - 1)) if t.clump > 1 else math.inf for t in tenants]
    index = {t.tenant_id: i for i, t in enumerate(tenants)}
    replica_ttft = [base.uniform(0.08, 0.2) for _ in REPLICAS]
    replica_tpot = [base.uniform(0.015, 0.035) for _ in REPLICAS]
    sources = [f"ipv4:198.51.100.{i}" for i in range(1, 255)]
    nat_sources = [f"ipv4:203.0.113.{i}" for i in range(1, 4)]
    # Rates wander: log-rate AR(1) with a ~2 minute memory and 20% spread.
    rho = math.exp(-1 / 120)
    wander = np.zeros(n)
    injections = traffic.injections if injected else []
    period = traffic.day_hours * 3600
    request_counter = 0

    def request(t: Tenant, at: float, key: str, rng: random.Random) -> RequestEvent:
        nonlocal request_counter
        request_counter += 1
        model = t.model if rng.random() < t.model_share else t.other_model
        prompt = min(int(rng.lognormvariate(t.prompt_mu, 0.9)) + 1, 16_000)
        completion = min(int(rng.lognormvariate(t.completion_mu, 0.8)) + 1, 2048)
        r = rng.randrange(len(REPLICAS))
        replica = REPLICAS[r]
        ttft_noise = rng.lognormvariate(0, 0.35)
        tpot_noise = rng.lognormvariate(0, 0.15)
        u = rng.random()
        status = "OK"
        if u < t.error_rate:
            status = "INVALID_ARGUMENT"
        elif u < t.error_rate + 0.003:
            status = rng.choice(("UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"))
        elif u < t.error_rate + 0.013:
            status = "CANCELLED"
        ttft_scale, tpot_scale = 1.0, 1.0
        tenant = f"tenant:{t.tenant_id}"
        for j in active_now:
            if j.kind == "mix_change" and j.series == tenant:
                prompt = min(int(prompt * j.magnitude), 16_000)
                completion = max(1, int(completion * j.magnitude2))
                if inj.random() < 0.8:
                    model = MODELS[4]
            elif j.kind == "error_burst" and j.series in (tenant, f"replica:{replica}"):
                if inj.random() < j.magnitude:
                    status = (
                        "UNAVAILABLE" if j.series.startswith("replica:") else "INVALID_ARGUMENT"
                    )
            elif j.kind == "latency_regression" and j.series == f"replica:{replica}":
                ttft_scale, tpot_scale = j.magnitude, j.magnitude2
        ttft = duration = 0.0
        if status in ("OK", "CANCELLED"):
            ttft = replica_ttft[r] * (1 + prompt / 3000) * ttft_noise * ttft_scale
            duration = ttft + replica_tpot[r] * tpot_noise * tpot_scale * (completion - 1)
        else:
            completion = 0
        return RequestEvent(
            kind=REQUEST,
            time=datetime.fromtimestamp(at, UTC),
            request_id=f"r{request_counter}",
            tenant_id=t.tenant_id,
            key_id=key,
            model=model,
            replica=replica,
            prompt_tokens=prompt,
            completion_tokens=completion,
            time_to_first_token_s=ttft,
            duration_s=duration,
            status_code=status,
            source="",
        )

    def failure(at: float, source: str, rng: random.Random) -> RequestEvent:
        return RequestEvent(
            kind=AUTH_FAILURE,
            time=datetime.fromtimestamp(at, UTC),
            status_code="UNAUTHENTICATED",
            # The gateway reports the peer, whose port changes with every connection.
            source=f"{source}:{rng.randrange(30000, 60000)}",
        )

    next_injection = 0
    active_now: list[Injection] = []
    for second in range(int(traffic.hours * 3600)):
        t0 = EPOCH + second
        while next_injection < len(injections) and injections[next_injection].start <= second:
            active_now.append(injections[next_injection])
            next_injection += 1
        active_now = [j for j in active_now if j.end > second]
        wander = rho * wander + math.sqrt(1 - rho * rho) * 0.2 * base_np.standard_normal(n)
        wave = 1 + amplitude * np.sin(2 * math.pi * second / period + phase)
        lam = rates * wave * np.exp(wander)
        arrivals = base_np.poisson(lam / clump)
        shift = np.ones(n)
        spikes: list[tuple[int, str, float]] = []
        for j in active_now:
            if j.kind == "level_shift":
                shift[index[j.series.removeprefix("tenant:")]] = j.magnitude
            elif j.kind == "rate_spike":
                i = index[j.series.removeprefix("tenant:")]
                spikes.append((i, j.key, max((j.magnitude - 1) * lam[i], 2.0)))
        extra = inj_np.poisson(lam * (shift - 1) / clump) if injected else np.zeros(n, int)
        events: list[RequestEvent] = []
        for i in np.flatnonzero(arrivals + extra):
            t = tenants[i]
            for count, rng in ((arrivals[i], base), (extra[i], inj)):
                for _ in range(count):
                    at = t0 + rng.random()
                    size = 1 + int(rng.expovariate(clump_rate[i]))
                    key = rng.choices(t.keys, t.key_weights)[0]
                    for _ in range(size):
                        events.append(request(t, at + 0.2 * rng.random(), key, rng))
        for i, key, extra_rate in spikes:
            for _ in range(inj_np.poisson(extra_rate)):
                events.append(request(tenants[i], t0 + inj.random(), key, inj))
        for _ in range(base_np.poisson(0.02)):
            source = base.choice(sources)
            at = t0 + base.random()
            for k in range(base.randint(1, 3)):
                events.append(failure(at + k * 0.5, source, base))
        for source in nat_sources:
            if base.random() < 0.02:
                events.append(failure(t0 + base.random(), source, base))
        for j in active_now:
            if j.kind == "auth_failure_burst":
                source = j.series.removeprefix("source:")
                for _ in range(inj_np.poisson(j.magnitude)):
                    events.append(failure(t0 + inj.random(), source, inj))
        events.sort(key=lambda e: e.time)
        yield from events


class StaticThresholds:
    """What a dashboard rule does: fixed, global limits over 30 s windows.

    Measures each statistic per series every bucket; with `limits` it raises
    findings above them, without it records the largest value seen (for
    calibration)."""

    def __init__(self, limits: dict[str, float] | None, book: AlertBook | None) -> None:
        self.limits = limits
        self.maxima: dict[str, float] = defaultdict(float)
        self._book = book
        self._window: dict[str, deque[list[float]]] = {}
        self._open: dict[str, list[float]] = defaultdict(lambda: [0.0] * 7)
        self._bucket = -1

    # Per-bucket sums: requests, tokens, errors, ttft sum, ttft n, tpot sum, tpot n / prompt.
    def observe(self, event: RequestEvent, at: float) -> list[Alert]:
        bucket = int(at // 5)
        alerts: list[Alert] = []
        if bucket > self._bucket:
            if self._bucket >= 0:
                alerts = self._close(bucket * 5.0)
            self._bucket = bucket
        if event.kind == AUTH_FAILURE:
            self._open[f"source:{event.source.rsplit(':', 1)[0]}"][0] += 1
            return alerts
        tokens = event.prompt_tokens + event.completion_tokens
        failed = event.status_code not in ("OK", "CANCELLED")
        for series in (f"tenant:{event.tenant_id}", f"key:{event.key_id}"):
            acc = self._open[series]
            acc[0] += 1
            acc[1] += tokens
            acc[2] += failed
            acc[3] += event.prompt_tokens
        acc = self._open[f"replica:{event.replica}"]
        acc[0] += 1
        acc[2] += failed
        if event.status_code == "OK" and event.time_to_first_token_s > 0:
            acc[3] += event.time_to_first_token_s
            acc[4] += 1
            if event.completion_tokens >= 2:
                per_token = event.duration_s - event.time_to_first_token_s
                acc[5] += per_token / (event.completion_tokens - 1)
                acc[6] += 1
        return alerts

    def _close(self, at: float) -> list[Alert]:
        for series in self._window.keys() | self._open.keys():
            bucket = self._open.get(series) or [0.0] * 7
            self._window.setdefault(series, deque(maxlen=6)).append(bucket)
        self._open.clear()
        findings: list[Finding] = []
        for series, window in list(self._window.items()):
            sums = [sum(b[i] for b in window) for i in range(7)]
            stats: list[tuple[str, str, float]] = []
            if series.startswith("source:"):
                stats.append(("auth_failures", "auth_failure_burst", sums[0]))
            elif series.startswith("replica:"):
                if sums[0] >= 10:
                    stats.append(("replica_error_rate", "error_burst", sums[2] / sums[0]))
                if sums[4] >= 10:
                    stats.append(("ttft", "ttft_regression", sums[3] / sums[4]))
                if sums[6] >= 10:
                    stats.append(("per_token", "token_latency_regression", sums[5] / sums[6]))
            else:
                stats.append(("requests", "request_rate_spike", sums[0]))
                stats.append(("tokens", "token_rate_spike", sums[1]))
                if series.startswith("tenant:") and sums[0] >= 10:
                    stats.append(("tenant_error_rate", "error_burst", sums[2] / sums[0]))
                if series.startswith("tenant:") and sums[0] >= 5:
                    stats.append(("prompt", "traffic_mix", sums[3] / sums[0]))
            for name, kind, value in stats:
                if self.limits is None:
                    self.maxima[name] = max(self.maxima[name], value)
                elif value > self.limits[name]:
                    tenant = series.split(":", 1)[1] if series.startswith("tenant:") else ""
                    limit = self.limits[name]
                    findings.append(Finding(kind, series, tenant, at, value / limit, value, limit))
            if not any(sums):
                del self._window[series]
        return [self._book.record(f) for f in findings] if self._book is not None else []


@dataclass
class Run:
    firings: list[Firing]
    alerts: dict[str, Firing]  # by alert id: the first firing
    events: int
    wall_s: float


def replay(traffic: Traffic, injected: bool, limits: dict[str, float]) -> tuple[Run, Run]:
    """(adaptive, static) firings over one pass of the traffic."""
    core = AnomalyCore(AnomalySettings())
    static = StaticThresholds(limits, AlertBook(AlertSettings(), lambda _: None))
    runs = (Run([], {}, 0, 0.0), Run([], {}, 0, 0.0))

    def note(run: Run, alert: Alert) -> None:
        firing = Firing(
            alert_id=alert.alert_id,
            kind=alert.kind,
            series=alert.series,
            at=alert.last_seen.timestamp() - EPOCH,
            first=alert.first_seen.timestamp() - EPOCH,
        )
        run.firings.append(firing)
        run.alerts.setdefault(alert.alert_id, firing)

    for event in generate(traffic, injected):
        at = event.time.timestamp()
        start = time.perf_counter()
        for alert in core.ingest(event):
            note(runs[0], alert)
        runs[0].wall_s += time.perf_counter() - start
        for alert in static.observe(event, at):
            note(runs[1], alert)
        runs[0].events += 1
    runs[1].events = runs[0].events
    return runs


def calibrate(traffic: Traffic) -> dict[str, float]:
    static = StaticThresholds(None, None)
    for event in generate(traffic, injected=False):
        static.observe(event, event.time.timestamp())
    return {name: 1.2 * value for name, value in static.maxima.items()}


def explains(injection: Injection, firing: Firing, grace_s: float) -> bool:
    if not injection.start <= firing.first <= injection.end + grace_s:
        return False
    if firing.series in injection.affected:
        return True
    return any(
        firing.series.startswith(prefix) and firing.kind in kinds
        for prefix, kinds in injection.explains_prefix
    )


def detection_delay(run: Run, j: Injection, grace_s: float) -> float | None:
    """Seconds from the anomaly's start to the first alert of its kind on its
    series; None when it was missed."""
    hits = [
        f.at - j.start
        for f in run.firings
        if f.kind in DETECTS[j.kind]
        and f.series in j.affected
        and j.start <= f.at <= j.end + grace_s
    ]
    return min(hits) if hits else None


def score(
    run: Run, injections: list[Injection], delays_of: list[float | None], grace_s: float
) -> dict[str, dict[str, Any]]:
    """Per kind; `delays_of[i]` is `detection_delay` of `injections[i]` in `run`."""
    rows: dict[str, dict[str, Any]] = {}
    for kind in INJECTED:
        mine = [j for j in injections if j.kind == kind]
        delays = [
            d
            for j, d in zip(injections, delays_of, strict=True)
            if j.kind == kind and d is not None
        ]
        alerts = [a for a in run.alerts.values() if a.kind in ROW_KINDS[kind]]
        true = sum(any(explains(j, a, grace_s) for j in injections) for a in alerts)
        rows[kind] = {
            "injected": len(mine),
            "found": len(delays),
            "recall": len(delays) / len(mine) if mine else math.nan,
            "alerts": len(alerts),
            "precision": true / len(alerts) if alerts else math.nan,
            "delay_p50_s": percentile(delays, 50),
            "delay_p90_s": percentile(delays, 90),
        }
    return rows


def false_alerts(run: Run, hours: float) -> dict[str, float]:
    by_kind: dict[str, int] = defaultdict(int)
    for alert in run.alerts.values():
        by_kind[alert.kind] += 1
    return {"total_per_hour": len(run.alerts) / hours} | {
        kind: count / hours for kind, count in sorted(by_kind.items())
    }


def render(
    adaptive: dict[str, dict[str, Any]],
    static: dict[str, dict[str, Any]],
    clean: dict[str, dict[str, float]],
    meta: dict[str, Any],
) -> str:
    def cell(row: dict[str, Any]) -> str:
        def f(v: float, spec: str) -> str:
            return "-" if math.isnan(v) else format(v, spec)

        return (
            f"{f(row['recall'], '.2f'):>6} {f(row['precision'], '.2f'):>6} "
            f"{f(row['delay_p50_s'], '.1f'):>7} {f(row['delay_p90_s'], '.1f'):>7}"
        )

    head = f"{'recall':>6} {'prec':>6} {'p50 s':>7} {'p90 s':>7}"
    lines = [
        f"{meta['hours']:g} simulated hours, {meta['tenants']} tenants, seed {meta['seed']}, "
        f"{meta['events']} events/run; detectors replayed at "
        f"{meta['events_per_s']:.0f} events/s ({meta['speedup']:.0f}x real time)",
        "",
        f"{'anomaly':<20} {'n':>3} | {'adaptive detectors':^28} | {'static thresholds':^28}",
        f"{'':<20} {'':>3} | {head} | {head}",
        "-" * 86,
    ]
    for kind in INJECTED:
        lines.append(
            f"{kind:<20} {adaptive[kind]['injected']:>3} | {cell(adaptive[kind])} | "
            f"{cell(static[kind])}"
        )
    lines.append("-" * 86)
    lines.append(
        f"{'false alerts/hour (clean run)':<24} | {clean['adaptive']['total_per_hour']:>28.2f} | "
        f"{clean['static']['total_per_hour']:>28.2f}"
    )
    for name in ("adaptive", "static"):
        kinds = {k: v for k, v in clean[name].items() if k != "total_per_hour"}
        if kinds:
            lines.append(
                f"  {name} by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in kinds.items())
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--day-hours", type=float, default=24.0, help="period of the daily wave")
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--per-kind", type=int, default=12)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--warmup-minutes", type=float, default=60.0)
    parser.add_argument("--grace", type=float, default=60.0, help="seconds after an anomaly")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    tenants = make_tenants(args.tenants, rng)
    injections = make_injections(tenants, args.hours, args.per_kind, args.warmup_minutes * 60, rng)
    traffic = Traffic(tenants, injections, args.hours, args.day_hours, args.seed)
    other_seed = args.seed + 100
    other_tenants = make_tenants(args.tenants, random.Random(other_seed))
    calibration = Traffic(other_tenants, [], 1.0, args.day_hours, other_seed)
    print("calibrating static thresholds on a clean hour (another seed)...", flush=True)
    limits = calibrate(calibration)
    print("replaying with anomalies...", flush=True)
    adaptive_run, static_run = replay(traffic, True, limits)
    print("replaying clean traffic...", flush=True)
    clean_adaptive, clean_static = replay(traffic, False, limits)

    adaptive_delays = [detection_delay(adaptive_run, j, args.grace) for j in injections]
    static_delays = [detection_delay(static_run, j, args.grace) for j in injections]
    adaptive = score(adaptive_run, injections, adaptive_delays, args.grace)
    static = score(static_run, injections, static_delays, args.grace)
    clean = {
        "adaptive": false_alerts(clean_adaptive, args.hours),
        "static": false_alerts(clean_static, args.hours),
    }
    events_per_s = adaptive_run.events / adaptive_run.wall_s
    meta = {
        "hours": args.hours,
        "tenants": args.tenants,
        "seed": args.seed,
        "events": adaptive_run.events,
        "events_per_s": events_per_s,
        "speedup": events_per_s * args.hours * 3600 / adaptive_run.events,
    }
    missed = [j for j, d in zip(injections, adaptive_delays, strict=True) if d is None]
    table = render(adaptive, static, clean, meta)
    if missed:
        table += "\nmissed by the adaptive detectors:\n" + "\n".join(
            f"  {j.kind:<20} {j.series:<28} at {j.start:7.0f} s for {j.end - j.start:4.0f} s, "
            f"magnitude {j.magnitude:.2f}"
            for j in missed
        )
    write_results(
        "anomaly_eval",
        table,
        parameters=vars(args),
        replay=meta,
        adaptive=adaptive,
        static=static,
        clean_false_alerts_per_hour=clean,
        static_limits=limits,
        injections=[
            {
                "kind": j.kind,
                "series": j.series,
                "start_s": round(j.start, 1),
                "duration_s": round(j.end - j.start, 1),
                "magnitude": round(j.magnitude, 2),
                "magnitude2": round(j.magnitude2, 2),
                "key": j.key,
                "adaptive_delay_s": adaptive_delay,
                "static_delay_s": static_delay,
            }
            for j, adaptive_delay, static_delay in zip(
                injections, adaptive_delays, static_delays, strict=True
            )
        ],
        settings=AnomalySettings().model_dump(mode="json", exclude={"telemetry"}),
    )


if __name__ == "__main__":
    main()
