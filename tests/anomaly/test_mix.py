"""Each tenant's traffic mix, scored by river's half-space trees."""

from __future__ import annotations

import random

from services.anomaly.detectors.mix import TrafficMixDetector
from services.anomaly.events import RequestEvent
from services.anomaly.settings import MixSettings
from tests.anomaly.support import BUCKET_S, T0, lognormal, poisson_times, request, run

# Past the trees' first window and the warm-up (80 observations of >= 30 s).
HISTORY_S = 50 * 60


def detector() -> TrafficMixDetector:
    return TrafficMixDetector(MixSettings(), bucket_s=BUCKET_S, idle_buckets=360)


def traffic(
    rng: random.Random,
    tenant: str,
    start: float,
    seconds: float,
    *,
    prompt: float = 300,
    completion: float = 150,
    model: str = "llama-8b",
) -> list[RequestEvent]:
    return [
        request(
            at,
            tenant=tenant,
            key=rng.choice((f"{tenant}-k1", f"{tenant}-k2")),
            model=model if rng.random() < 0.95 else "mistral-7b",
            prompt=int(lognormal(rng, prompt, 0.9)) + 1,
            completion=int(lognormal(rng, completion, 0.8)) + 1,
        )
        for at in poisson_times(rng, start, seconds, 1.0)
    ]


def test_a_steady_mix_raises_nothing() -> None:
    rng = random.Random(1)
    assert run(detector(), traffic(rng, "steady", T0, HISTORY_S + 1800)) == []


def test_long_prompts_short_answers_on_another_model_are_a_mix_change() -> None:
    rng = random.Random(2)
    change = T0 + HISTORY_S
    events = traffic(rng, "acme", T0, HISTORY_S)
    events += traffic(rng, "acme", change, 900, prompt=1500, completion=40, model="qwen-14b")
    events += traffic(rng, "calm", T0, HISTORY_S + 900)
    findings = run(detector(), events)
    assert findings
    assert {(f.kind, f.series, f.tenant_id) for f in findings} == {
        ("traffic_mix", "tenant:acme", "acme")
    }
    assert min(f.at for f in findings) > change
    assert all(f.score >= MixSettings().score_threshold for f in findings)
    assert "sd from usual" in findings[0].detail  # names the feature that moved most
