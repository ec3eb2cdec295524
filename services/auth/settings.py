"""Auth settings: flags over `MAAS_AUTH_*` env over defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_AUTH_", env_nested_delimiter="__", extra="forbid"
    )

    port: int = 50052
    database_path: Path = Path(".maas/auth.db")
    # postgresql://... to use PostgreSQL (production); unset: SQLite at database_path.
    database_url: str | None = None
    admin_token: SecretStr = Field(description="bearer credential for the admin rpcs")
    key_pepper: SecretStr = Field(description="HMAC key for API-key hashes; keep it stable")
    # A reservation not settled or renewed by then (its gateway died) lapses and
    # frees its slot; short, as running requests' gateways renew every third of it.
    reservation_lease_s: float = Field(default=30.0, gt=0)
    # How long a tenant's idempotency key (its callers' x-request-id) is remembered.
    idempotency_retention_s: float = Field(default=24 * 3600.0, gt=0)
