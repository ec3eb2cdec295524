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


def test_the_same_change_twice_is_found_twice() -> None:
    """An anomaly is not learnt as the reference the next one is judged against."""
    rng = random.Random(3)
    # Twenty minutes apart: the first is still in the trees' reference window.
    first, second = T0 + HISTORY_S, T0 + HISTORY_S + 900 + 1200
    events = traffic(rng, "acme", T0, HISTORY_S)
    events += traffic(rng, "acme", first, 900, prompt=1500, completion=40, model="qwen-14b")
    events += traffic(rng, "acme", first + 900, 1200)
    events += traffic(rng, "acme", second, 900, prompt=1500, completion=40, model="qwen-14b")
    findings = run(detector(), events)
    assert any(first < f.at <= first + 900 for f in findings)
    assert any(second < f.at <= second + 900 for f in findings)
    assert not any(first + 900 + 300 < f.at <= second for f in findings)


def test_a_change_that_lasts_becomes_the_new_normal() -> None:
    rng = random.Random(4)
    change = T0 + HISTORY_S
    events = traffic(rng, "acme", T0, HISTORY_S)
    events += traffic(rng, "acme", change, 4 * 3600, prompt=1500, completion=40)
    findings = run(detector(), events)
    assert findings
    # Past `relearn_after` unusual observations the new shape is the reference.
    relearnt = change + MixSettings().relearn_after * 60 + 1800
    assert not any(f.at > relearnt for f in findings)


def test_failed_requests_are_not_a_change_of_mix() -> None:
    rng = random.Random(5)
    events = traffic(rng, "acme", T0, HISTORY_S + 900)
    # A failing replica: half the requests after the history end with no completion.
    failing = [
        request(
            e.time.timestamp(),
            tenant="acme",
            key=e.key_id,
            model=e.model,
            prompt=e.prompt_tokens,
            status="UNAVAILABLE",
        )
        if e.time.timestamp() > T0 + HISTORY_S and i % 2
        else e
        for i, e in enumerate(events)
    ]
    assert run(detector(), failing) == []
