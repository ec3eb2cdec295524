"""Domain objects of auth and metering."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace
from datetime import datetime


class Priority(enum.IntEnum):
    INTERACTIVE = 1
    DEFAULT = 2
    BATCH = 3


class Scope(enum.StrEnum):
    GENERATE = "generate"
    USAGE_READ = "usage:read"
    # Create and delete the tenant's private adapters (any key lists them).
    ADAPTERS = "adapters"
    ADMIN = "admin"


DEFAULT_SCOPES = (Scope.GENERATE, Scope.USAGE_READ, Scope.ADAPTERS)


@dataclass(frozen=True, slots=True)
class Plan:
    """A tenant's limits; 0 means unlimited, no models means all models."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent_requests: int = 0
    monthly_token_budget: int = 0
    allowed_models: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "requests_per_minute": self.requests_per_minute,
                "tokens_per_minute": self.tokens_per_minute,
                "max_concurrent_requests": self.max_concurrent_requests,
                "monthly_token_budget": self.monthly_token_budget,
                "allowed_models": list(self.allowed_models),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text or "{}")
        data["allowed_models"] = tuple(data.get("allowed_models", ()))
        return cls(**data)


# A new tenant's plan when its creator names none (auth's `default_plan`
# setting): room to try the mesh and build against it, little to lose to a
# leaked key or a runaway loop before an operator sets a real plan.
DEFAULT_PLAN = Plan(
    requests_per_minute=60,
    tokens_per_minute=20_000,
    max_concurrent_requests=4,
    monthly_token_budget=1_000_000,
)


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    name: str
    priority: Priority
    created_at: datetime
    plan: Plan = Plan()


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str
    tenant_id: str
    name: str
    scopes: tuple[Scope, ...]
    secret_hash: bytes
    created_at: datetime
    revoked_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Admin:
    """Who runs an admin rpc: the operator (`tenant_id` None: every tenant and
    the whole mesh), or an API key with the `admin` scope, which administers
    its own tenant and nothing else."""

    tenant_id: str | None
    key_id: str = ""

    @property
    def is_operator(self) -> bool:
        return self.tenant_id is None


OPERATOR = Admin(tenant_id=None)


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    key_id: str
    scopes: tuple[Scope, ...]
    priority: Priority


class RequestStatus(enum.StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    # A progress record of a stream still running; a later record supersedes it.
    RUNNING = "running"

    @property
    def final(self) -> bool:
        return self is not RequestStatus.RUNNING


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    tenant_id: str
    key_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    start_time: datetime
    end_time: datetime
    status: RequestStatus
    cached_tokens: int = 0
    # The caller's own x-request-id, a label; "" when none.
    client_request_id: str = ""

    def superseded_by(self, later: UsageRecord) -> UsageRecord | None:
        """This stored record once `later`, of the same request, arrives: the
        larger counts and the final status; None when they conflict (another
        tenant, key or model, or two final records that differ)."""
        if (self.tenant_id, self.key_id, self.model) != (
            later.tenant_id,
            later.key_id,
            later.model,
        ):
            return None
        if self.status.final and later.status.final:
            return self if self.same_usage(later) else None
        return replace(
            self,
            prompt_tokens=max(self.prompt_tokens, later.prompt_tokens),
            completion_tokens=max(self.completion_tokens, later.completion_tokens),
            cached_tokens=max(self.cached_tokens, later.cached_tokens),
            end_time=max(self.end_time, later.end_time),
            status=self.status if self.status.final else later.status,
            client_request_id=self.client_request_id or later.client_request_id,
        )

    def same_usage(self, other: UsageRecord) -> bool:
        """Whether `other` bills the same thing (a replay, not a conflict)."""
        return (
            self.tenant_id,
            self.key_id,
            self.model,
            self.prompt_tokens,
            self.completion_tokens,
            self.cached_tokens,
            self.status,
        ) == (
            other.tenant_id,
            other.key_id,
            other.model,
            other.prompt_tokens,
            other.completion_tokens,
            other.cached_tokens,
            other.status,
        )


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """A tenant's idempotency key (its caller's x-request-id), held by the
    mesh request that claimed it first."""

    tenant_id: str
    key: str
    request_id: str
    created_at: datetime


class Grouping(enum.StrEnum):
    MODEL = "model"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class UsageBucket:
    key: str  # the model, or the period's start in RFC 3339 (UTC)
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class UsageSummary:
    tenant_id: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


class RestrictionAction(enum.StrEnum):
    SUSPEND = "suspend"
    THROTTLE = "throttle"


@dataclass(frozen=True, slots=True)
class Restriction:
    """A suspension or throttle of a tenant (key_id empty) or one of its keys."""

    restriction_id: str
    tenant_id: str
    key_id: str
    action: RestrictionAction
    requests_per_minute: int
    created_at: datetime
    expires_at: datetime
    reason: str
    actor: str
    alert_id: str = ""
    lifted_at: datetime | None = None
    lifted_by: str = ""

    def active(self, now: datetime) -> bool:
        return self.lifted_at is None and now < self.expires_at

    @property
    def subject(self) -> str:
        return f"key:{self.key_id}" if self.key_id else f"tenant:{self.tenant_id}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    audit_id: str
    at: datetime
    actor: str
    action: str  # "restrict" or "lift"
    restriction_id: str
    tenant_id: str
    key_id: str
    detail: str
