"""Budget thresholds: auth's Commit saw a money budget's spend cross its soft
threshold (once per budget and period) and the gateway reported it. No
statistics to run: each such event is the finding, so it shows beside the
detected anomalies in `maas alerts` and the console."""

from __future__ import annotations

from services.anomaly.detectors.base import Finding
from services.anomaly.events import BUDGET_THRESHOLD, RequestEvent

MICROS = 1_000_000  # micro-units in one unit of the currency


class BudgetThresholdDetector:
    KIND = "budget_threshold"

    def observe(self, event: RequestEvent, at: float, bucket: int) -> list[Finding]:
        if event.kind != BUDGET_THRESHOLD or not event.tenant_id:
            return []
        owner = f"key {event.key_id}" if event.key_id else "the tenant"
        return [
            Finding(
                kind=self.KIND,
                series=f"{event.tenant_id}/{event.budget}",
                tenant_id=event.tenant_id,
                at=at,
                score=event.spent_micros / event.threshold_micros if event.threshold_micros else 1,
                observed=event.spent_micros / MICROS,
                expected=event.threshold_micros / MICROS,
                detail=(
                    f"{event.budget}: {owner} spent {event.spent_micros / MICROS:.6f},"
                    f" past its soft threshold {event.threshold_micros / MICROS:.6f}"
                ),
            )
        ]

    def advance(self, bucket: int) -> list[Finding]:
        return []

    def tracked(self) -> int:
        return 0

    def evicted(self) -> int:
        return 0
