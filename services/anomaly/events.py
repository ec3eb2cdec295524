"""What the detectors consume: one request (or refused call) on the request path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

REQUEST = "EVENT_KIND_REQUEST"
AUTH_FAILURE = "EVENT_KIND_AUTH_FAILURE"
BUDGET_THRESHOLD = "EVENT_KIND_BUDGET_THRESHOLD"


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """Fields a kind of event does not carry stay empty (an auth failure has
    no tenant, model or tokens)."""

    kind: str
    time: datetime
    request_id: str = ""
    tenant_id: str = ""
    key_id: str = ""
    model: str = ""
    replica: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_s: float = 0.0
    duration_s: float = 0.0
    status_code: str = ""
    source: str = ""
    # A budget threshold's budget (its QuotaFailure subject), spend and threshold.
    budget: str = ""
    spent_micros: int = 0
    threshold_micros: int = 0
