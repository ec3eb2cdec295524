"""Auth settings: flags over `MAAS_AUTH_*` env over defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.auth.models import DEFAULT_PLAN, Plan
from services.common.adapter_limits import DEFAULT_MAX_WEIGHTS_BYTES, MAX_WEIGHTS_BYTES
from services.common.settings import ServiceSettings

# The least length of the operator token and the key pepper: a random token
# of 32 characters (token_urlsafe(24) and up) is beyond guessing; a word typed
# by hand to get started is not.
MIN_SECRET_LENGTH = 32


class DefaultPlanSettings(BaseModel):
    """The plan a tenant created without one gets (`--default-plan.requests-per-minute`,
    `MAAS_AUTH_DEFAULT_PLAN__TOKENS_PER_MINUTE`). Finite: 0 (unlimited) is refused
    here; an operator grants unlimited per tenant with SetPlan."""

    requests_per_minute: int = Field(default=DEFAULT_PLAN.requests_per_minute, ge=1)
    tokens_per_minute: int = Field(default=DEFAULT_PLAN.tokens_per_minute, ge=1)
    max_concurrent_requests: int = Field(default=DEFAULT_PLAN.max_concurrent_requests, ge=1)
    monthly_token_budget: int = Field(default=DEFAULT_PLAN.monthly_token_budget, ge=1)

    def plan(self) -> Plan:
        return Plan(
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrent_requests=self.max_concurrent_requests,
            monthly_token_budget=self.monthly_token_budget,
        )


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_AUTH_", env_nested_delimiter="__", extra="forbid"
    )

    port: int = 50052
    database_path: Path = Path(".maas/auth.db")
    # postgresql://... to use PostgreSQL (production); unset: SQLite at database_path.
    database_url: str | None = None
    # redis://host:port/db: quota state (rate buckets, held leases, restriction
    # throttles) shared by every auth replica; unset: in this process's memory,
    # which allows one auth replica only.
    quota_url: str | None = None
    # The operator token: mesh-wide administration (tenants, plans, restrictions,
    # any tenant's keys). An API key with the `admin` scope administers only
    # its own tenant.
    admin_token: SecretStr = Field(
        description=f"the operator token (at least {MIN_SECRET_LENGTH} characters)"
    )
    key_pepper: SecretStr = Field(
        description=f"HMAC key for API-key hashes (at least {MIN_SECRET_LENGTH} characters); "
        "keep it stable"
    )
    default_plan: DefaultPlanSettings = DefaultPlanSettings()
    # A reservation not settled or renewed by then (its gateway died) lapses and
    # frees its slot; short, as running requests' gateways renew every third of it.
    reservation_lease_s: float = Field(default=30.0, gt=0)
    # How long a tenant's idempotency key (its callers' x-request-id) is remembered.
    idempotency_retention_s: float = Field(default=24 * 3600.0, gt=0)
    # Tenants' private LoRA adapters: the most bytes of one adapter's weights
    # (a rank-64 LoRA of a 7B model's attention is ~34 MiB in fp16), the
    # highest rank (vLLM's max_lora_rank must be at least this on replicas),
    # and how many one tenant may hold (each is stored here, whole).
    # Their upper bounds: one stored value (services/common/adapter_limits.py),
    # vLLM's highest LoRA rank, and the adapters ListAdapters answers in one
    # unpaged reply.
    max_adapter_bytes: int = Field(default=DEFAULT_MAX_WEIGHTS_BYTES, ge=1, le=MAX_WEIGHTS_BYTES)
    max_adapter_rank: int = Field(default=64, ge=1, le=512)
    max_adapters_per_tenant: int = Field(default=16, ge=1, le=1024)
    # Adapter uploads held in memory at once (each up to max_adapter_bytes);
    # one more is RESOURCE_EXHAUSTED, to retry. At most 64: 64 GB at the byte cap.
    max_adapter_uploads: int = Field(default=4, ge=1, le=64)
    # Of those, one tenant's at once: no tenant can take every place.
    max_adapter_uploads_per_tenant: int = Field(default=1, ge=1, le=64)

    @field_validator("quota_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # Checked here: redis-py would only refuse it at the first Reserve.
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a Redis URL: redis://, rediss:// or unix://")
        return value

    @field_validator("admin_token", "key_pepper")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"must be at least {MIN_SECRET_LENGTH} characters (a random token, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return value
