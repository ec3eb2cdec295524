"""Router settings: flags over `MAAS_ROUTER_*` env over defaults."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_ROUTER_", env_nested_delimiter="__", extra="forbid"
    )

    port: int = 50053
    replicas: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:50054"],
        description="host:port of the inference replicas",
    )
    # Backoff between attempts to re-open a replica's health watch after it broke.
    health_retry_initial_s: float = Field(default=0.2, gt=0)
    health_retry_max_s: float = Field(default=5.0, gt=0)
