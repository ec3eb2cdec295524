"""Gateway settings: flags over `MAAS_GATEWAY_*` env over defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        # MAAS_GATEWAY_HTTP_PORT=null turns the HTTP face off, as --http-port null does.
        env_parse_none_str="null",
    )

    port: int = 50051
    # The OpenAI-compatible HTTP face, on the same host; 0 picks a free port, null turns it off.
    http_port: int | None = Field(default=8000, ge=0, le=65535)
    router_address: str = "127.0.0.1:50053"
    auth_address: str = "127.0.0.1:50052"
    anomaly_address: str = "127.0.0.1:50055"
    # Bounds how long a revoked key keeps working here.
    auth_cache_ttl_s: float = Field(default=5.0, ge=0)
    auth_cache_size: int = Field(default=10_000, ge=1)
    # Events beyond this many waiting for anomaly are dropped (and counted), never waited on.
    event_queue_size: int = Field(default=10_000, ge=1)
    # Completion tokens reserved for a request that sets no max_tokens.
    default_max_tokens_estimate: int = Field(default=1024, ge=1)
    # Deadline of each Reserve, Renew, Commit and Release call to auth: a few
    # seconds, as auth answers in milliseconds and a hung call holds a request.
    quota_call_timeout_s: float = Field(default=3.0, gt=0)
    # A running stream's usage so far goes to the outbox this often: a gateway
    # killed mid-stream loses at most this much of its bill.
    usage_progress_interval_s: float = Field(default=5.0, gt=0)
    # Usage records wait here (on disk) until the ledger acknowledges them.
    usage_outbox_path: Path = Path(".maas/gateway-outbox.db")

    def listening_ports(self) -> set[int]:
        ports = super().listening_ports()
        if self.http_port:
            ports.add(self.http_port)
        return ports
