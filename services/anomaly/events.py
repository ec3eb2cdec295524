"""What the detectors consume: one request (or refused call) on the request path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

REQUEST = "EVENT_KIND_REQUEST"
AUTH_FAILURE = "EVENT_KIND_AUTH_FAILURE"


@dataclass(frozen=True, slots=True)
class RequestEvent:
    kind: str
    time: datetime
    request_id: str
    tenant_id: str
    key_id: str
    model: str
    replica: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    duration_s: float
    status_code: str
    source: str
