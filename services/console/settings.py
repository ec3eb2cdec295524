"""Console settings: flags over `MAAS_CONSOLE_*` env over defaults."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class ConsoleSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_CONSOLE_", env_nested_delimiter="__", extra="forbid"
    )
    # Public: people sign in from their browsers with their own credentials.
    mesh_only: ClassVar[bool] = False

    # The console's HTTP port: the customary alternative HTTP port, beside the gateway's 8000.
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")
    gateway_address: str = "127.0.0.1:50051"
    auth_address: str = "127.0.0.1:50052"
    router_address: str = "127.0.0.1:50053"
    anomaly_address: str = "127.0.0.1:50055"
    # A working day: long enough not to interrupt one, short enough that a
    # forgotten browser does not stay signed in for good. At most a week: a
    # stolen cookie must not outlive it.
    session_ttl_s: float = Field(default=8 * 3600, gt=0, le=7 * 24 * 3600)
    # Sessions held at once; past it the oldest is signed out (bounds memory).
    max_sessions: int = Field(default=10_000, ge=1)
    # Deadline of each unary call to the mesh while a page renders; at most a
    # minute, past which a browser has given up on the page anyway.
    call_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Mark the session cookie Secure (sent over HTTPS only). Unset: when the
    # console itself serves TLS; set it behind a TLS-terminating proxy.
    secure_cookie: bool | None = None

    @property
    def cookie_secure(self) -> bool:
        return self.tls.serves_tls if self.secure_cookie is None else self.secure_cookie
