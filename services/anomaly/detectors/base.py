"""What every detector reports and the interface the core drives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.anomaly.events import RequestEvent


@dataclass(frozen=True, slots=True)
class Finding:
    """One firing of a detector; the alert book merges repeated firings."""

    kind: str
    series: str
    tenant_id: str
    at: float  # event time, seconds since the epoch
    score: float  # in the detector's own units; higher is stronger
    observed: float
    expected: float
    detail: str = ""


class Detector(Protocol):
    def observe(self, event: RequestEvent, at: float, bucket: int) -> list[Finding]:
        """Takes one event of bucket `bucket` (never earlier than the last one seen)."""
        ...

    def advance(self, bucket: int) -> list[Finding]:
        """Closes every bucket before `bucket`; called once per new bucket, before its events."""
        ...

    def tracked(self) -> int:
        """Series held now."""
        ...

    def evicted(self) -> int:
        """Series forgotten so far (idle or over the cap)."""
        ...
