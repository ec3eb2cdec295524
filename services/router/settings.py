"""Router settings: flags over `MAAS_ROUTER_*` env over defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_ROUTER_", env_nested_delimiter="__", extra="forbid"
    )

    # The mesh's port plan: gateway 50051, auth 50052, router 50053,
    # inference 50054, anomaly 50055.
    port: int = 50053
    replicas: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:50054"],
        description="host:port of the inference replicas",
    )
    # Backoff between attempts to re-open a replica's health watch after it broke.
    health_retry_initial_s: float = Field(default=0.2, gt=0)
    health_retry_max_s: float = Field(default=5.0, gt=0)
    # Admission queue, per model: bounded in total and per tenant.
    max_queue: int = Field(default=1024, ge=1)
    max_queue_per_tenant: int = Field(default=256, ge=1)
    # A waiting request gains one priority class per this many seconds.
    aging_s: float = Field(default=5.0, gt=0)
    # Longest wait for requests that carry no deadline of their own.
    max_queue_wait_s: float = Field(default=30.0, gt=0)
    # How far past its share of the requests in flight (0.25: 25%) the replica
    # that likely caches a request's prompt prefix may go, and still win.
    affinity_slack: float = Field(default=0.25, ge=0)
    # How a replica is chosen: "affinity" (least utilized, preferring the one
    # likely to have the prompt prefix cached), "least_loaded", "round_robin".
    replica_choice: Literal["affinity", "least_loaded", "round_robin"] = "affinity"
    # A request with a private adapter prefers a replica holding it loaded
    # (by its load reports and what this router sent it lately), then one
    # with a free adapter slot. Off: `replica_choice` alone, adapters ignored.
    adapter_affinity: bool = True
    # An adapter unused this long may be evicted for another adapter's
    # waiting requests; sooner, they wait (at most this long). 0: evict any
    # idle adapter at once. Three GPU loads' time (0.1 s each): in
    # bench/adapter_routing.py, 0.3 s cut loads per request from 0.22 to 0.14
    # against 0, and 1 s to 0.07 at a higher p99 time to first token. At most
    # a minute: another adapter's requests may wait that long on an idle slot.
    adapter_idle_s: float = Field(default=0.3, ge=0, le=60)
    # Share of each replica's slots kept for tenants holding fewer slots than
    # their fair share, so a light tenant starts at once during a flood.
    reserved_share: float = Field(default=0.1, ge=0, lt=1)
    # Tenants seen within this long count when the reserve's fair share is computed.
    tenant_memory_s: float = Field(default=60.0, ge=0)
    # Free slots kept for light tenants beyond the reserve: this many square
    # roots of the slots they hold (headroom.py); 0: none. Past 16 the margin
    # exceeds any batch a replica runs, and floods would never be placed.
    light_headroom: float = Field(default=2.0, ge=0, le=16)
    # Adaptive per-replica concurrency limit (capped by the replica's batch size).
    initial_concurrency: int = Field(default=32, ge=1)
    # The limit shrinks while queueing in the engine is more than this share
    # of the time to first token.
    latency_tolerance: float = Field(default=0.5, gt=0)
    # Outlier ejection: this many failures in a row eject a replica for
    # ejection_base_s, doubling per ejection in a row up to ejection_max_s.
    ejection_failures: int = Field(default=3, ge=1)
    ejection_base_s: float = Field(default=5.0, gt=0)
    ejection_max_s: float = Field(default=60.0, gt=0)
    # Attempts per request; a retry happens only before the first chunk.
    max_attempts: int = Field(default=2, ge=1)
