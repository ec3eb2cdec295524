"""Auth settings: flags over `MAAS_AUTH_*` env over defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

# The least length of the operator token and the key pepper: a random token
# of 32 characters (token_urlsafe(24) and up) is beyond guessing; a word typed
# by hand to get started is not.
MIN_SECRET_LENGTH = 32


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_AUTH_", env_nested_delimiter="__", extra="forbid"
    )

    port: int = 50052
    database_path: Path = Path(".maas/auth.db")
    # postgresql://... to use PostgreSQL (production); unset: SQLite at database_path.
    database_url: str | None = None
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
    # A reservation not settled by then (its gateway died) lapses and frees its slot.
    reservation_lease_s: float = Field(default=600.0, gt=0)

    @field_validator("admin_token", "key_pepper")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"must be at least {MIN_SECRET_LENGTH} characters (a random token, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return value
