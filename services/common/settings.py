"""The base of every service's settings: flags over `MAAS_*` env over defaults."""

from __future__ import annotations

from typing import Self

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from observability.settings import TelemetrySettings


class ServiceSettings(BaseSettings):
    """Fields every service has; subclasses set their own `env_prefix`."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    # Longer than any in-flight stream's tail should need, shorter than compose's stop grace.
    grace_period_s: float = Field(default=10.0, ge=0)
    telemetry: TelemetrySettings = TelemetrySettings()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_cli(cls, argv: list[str] | None = None) -> Self:
        """Settings from command-line flags (`--port 50051`), then env, then defaults."""
        return cls(
            _cli_parse_args=argv if argv is not None else True,
            _cli_kebab_case=True,
            _cli_implicit_flags=True,
        )
