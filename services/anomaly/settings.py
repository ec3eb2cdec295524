"""Anomaly settings: flags over `MAAS_ANOMALY_*` env over defaults."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class AnomalySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_ANOMALY_", env_nested_delimiter="__", extra="forbid"
    )

    port: int = 50055
