"""Gateway settings: flags over `MAAS_GATEWAY_*` env over defaults."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from gateway.refusal_holds import (
    DEFAULT_HOLD_BYTES,
    DEFAULT_HOLDS,
    DEFAULT_HOLDS_PER_CALLER,
    DEFAULT_MAX_HOLD_S,
)
from gateway.refusals import (
    DEFAULT_AUTH_FAILURE_BURST,
    DEFAULT_AUTH_FAILURES_PER_S,
    DEFAULT_READ_BURST,
    DEFAULT_READS_PER_S,
    DEFAULT_REFUSAL_BURST,
    DEFAULT_REFUSALS_PER_S,
)
from services.common.balanced import balanced_target
from services.common.generation_limits import MAX_HTTP_BODY_BYTES
from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        # MAAS_GATEWAY_HTTP_PORT=null turns the HTTP face off, as --http-port null does.
        env_parse_none_str="null",
    )
    # Public: tenants call it from anywhere, with their API keys.
    mesh_only: ClassVar[bool] = False
    # Address settings that take every replica of the service they name, as
    # a comma-separated list (deploy/local/stack.py gives them all).
    balanced_address_fields: ClassVar[frozenset[str]] = frozenset({"auth_address"})

    # gRPC's customary port; auth, router, inference and anomaly take 50052-50055.
    port: int = 50051
    # The OpenAI-compatible HTTP face, on the same host; 0 picks a free port, null turns it off.
    # 8000: where vLLM's and other OpenAI-compatible servers listen, so clients' defaults fit.
    http_port: int | None = Field(default=8000, ge=0, le=65535)
    router_address: str = "127.0.0.1:50053"
    # How generations reach the replicas: "proxy" through the router, which
    # streams every chunk through; "direct": the router admits and picks the
    # replica, and the gateway streams from the replica itself (the replicas'
    # addresses the router knows must then be reachable from here).
    # Direct by default: bench/hop_cost measured less mesh CPU per token (the
    # router leaves the token path) for streams of a few hundred tokens.
    routing: Literal["proxy", "direct"] = "direct"
    # Messages a second this gateway takes in over all the streams it
    # forwards: each stream asks its replica for one message at most every
    # `open streams / this` seconds, tokens in between merged (gateway/pacing.py).
    # 2,000: a message costs the gateway 100-250 us of CPU (bench/hop_cost),
    # so 0.2-0.5 of its core, the rest left for requests (~2 ms each); budgets
    # of 1,000-4,000 all beat pacing by the replicas alone in
    # bench/capacity_pacing. 0: the replicas pace on their own. At most a
    # million: past what any process forwards.
    stream_messages_per_s: float = Field(default=2000.0, ge=0, le=1_000_000)
    # Direct routing: channels to replicas kept open while unused (least
    # recently used closed first): a large mesh's replicas, without leaking
    # one per replica ever seen.
    max_idle_replica_channels: int = Field(default=256, ge=0)
    # Auth's replicas, reached over one channel balanced round robin: one
    # host:port, several (`10.0.0.1:50052,10.0.0.2:50052`, IP addresses), or
    # any gRPC target (`dns:///auth:50052`, every address the name resolves to).
    auth_address: str = "127.0.0.1:50052"
    anomaly_address: str = "127.0.0.1:50055"
    # Bounds how long a revoked key keeps working here.
    auth_cache_ttl_s: float = Field(default=5.0, ge=0)
    # Keys in use at once whose principal is kept: a large deployment's, in a few MB.
    auth_cache_size: int = Field(default=10_000, ge=1)
    # A key auth refused is refused here, without asking, for this long: a flood
    # of made-up keys costs auth one lookup per key per window. Short, so a key
    # created just after someone guessed at it works soon.
    auth_negative_ttl_s: float = Field(default=5.0, ge=0)
    # Some 300 bytes an entry (digest, expiry, message): a flood fills ~30 MB, no more.
    auth_negative_cache_size: int = Field(default=100_000, ge=1)
    # Deadline of each unary call to auth (Authenticate, the usage query) and of
    # the model list: a wedged auth answers callers UNAVAILABLE, not never.
    auth_timeout_s: float = Field(default=3.0, gt=0)
    # How long a tenant's adapter name resolves (or fails to) as it did: how
    # late another gateway sees an adapter created or deleted. Misses are
    # cached too, so made-up names cost the registry one lookup per window.
    adapter_cache_ttl_s: float = Field(default=5.0, ge=0)
    # (tenant, name) resolutions kept, the least recently used dropped first;
    # some 300 bytes each.
    adapter_cache_size: int = Field(default=10_000, ge=1)
    # Tenants whose adapter list (for their model list) is kept for
    # adapter_cache_ttl_s: up to 16 adapters each by default, some 5 KB.
    # At most a million lists (some 5 GB at 16 adapters each).
    adapter_list_cache_size: int = Field(default=1_000, ge=1, le=1_000_000)
    # Events beyond this many waiting for anomaly are dropped (and counted), never waited on.
    # At most a million (some 500 MB of events): a bound on what an outage of anomaly holds.
    event_queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    # How long the router's model list (names, context lengths) is trusted
    # before a request is checked against it; also how late a new model is seen.
    model_list_ttl_s: float = Field(default=5.0, gt=0)
    # Processes compiling regex/JSON-schema constraints before admission, and
    # how long one compile may take: honest schemas compile in milliseconds.
    constraint_workers: int = Field(default=1, ge=1)
    constraint_compile_timeout_s: float = Field(default=2.0, gt=0)
    # HTTP request bodies past this are refused before they are read; below
    # 1 KiB not even a short chat request would fit.
    http_max_body_bytes: int = Field(default=MAX_HTTP_BODY_BYTES, ge=1024)
    # Refusals a tenant may cost before its requests are refused unread (a
    # burst, then per second), and failed authentications an address may
    # cost before keys never seen accepted are refused without asking auth:
    # see refusals.py.
    refusal_burst: float = Field(default=DEFAULT_REFUSAL_BURST, ge=1)
    refusals_per_s: float = Field(default=DEFAULT_REFUSALS_PER_S, gt=0)
    auth_failure_burst: float = Field(default=DEFAULT_AUTH_FAILURE_BURST, ge=1)
    auth_failures_per_s: float = Field(default=DEFAULT_AUTH_FAILURES_PER_S, gt=0)
    # A refusal of a spent budget (refusals, failed authentications, reads) is
    # answered only after the wait it names, at most refusal_hold_max_s; at
    # most refusal_holds_per_caller such calls per tenant or address are
    # held, refusal_holds in all; past them, answered at once: see
    # refusal_holds.py. The upper bounds bound what held calls keep: each its
    # request, refusal_hold_bytes of them in all (at most 1 GiB).
    refusal_hold_max_s: float = Field(default=DEFAULT_MAX_HOLD_S, gt=0, le=30)
    refusal_holds_per_caller: int = Field(default=DEFAULT_HOLDS_PER_CALLER, ge=0, le=1024)
    refusal_holds: int = Field(default=DEFAULT_HOLDS, ge=0, le=16384)
    refusal_hold_bytes: int = Field(default=DEFAULT_HOLD_BYTES, ge=0, le=1 << 30)
    # Per tenant, reads that query auth (usage, adapters, the model list) and
    # adapter writes: a token bucket, see refusals.py.
    # At most a million: past that the budget bounds nothing (and inf is refused).
    read_burst: float = Field(default=DEFAULT_READ_BURST, ge=1, le=1_000_000)
    reads_per_s: float = Field(default=DEFAULT_READS_PER_S, gt=0, le=1_000_000)
    # A request head must arrive within this of its first byte (slowloris):
    # honest clients send a head in one packet, milliseconds.
    http_head_timeout_s: float = Field(default=10.0, gt=0)
    # HTTP connections one peer address may hold at once: past what one
    # client's pool opens at once (the openai package's httpx pool allows
    # 1,000), far below the process's file descriptors. Behind a proxy every
    # client is the proxy's address: raise it there, or 0 for no limit.
    http_max_connections_per_peer: int = Field(default=1024, ge=0)
    # Deadline of each Reserve, Renew, Commit and Release call to auth: a few
    # seconds, as auth answers in milliseconds and a hung call holds a request.
    quota_call_timeout_s: float = Field(default=3.0, gt=0)
    # A running stream's usage so far goes to the outbox this often: a gateway
    # killed mid-stream loses at most this much of its bill.
    usage_progress_interval_s: float = Field(default=5.0, gt=0)
    # Usage records wait here (on disk) until the ledger acknowledges them.
    usage_outbox_path: Path = Path(".maas/gateway-outbox.db")
    # Several gateways: a directory they all share (a volume). Each keeps its
    # records in a file of its own there (usage_outbox_path is then unused),
    # locked while it runs; any gateway delivers and removes the file of one
    # that is gone, so a gateway lost for good loses no usage.
    usage_outbox_dir: Path | None = None
    # How often a gateway looks in usage_outbox_dir for files nobody holds:
    # how late a lost gateway's records reach the ledger, for one directory
    # listing and a lock attempt a file.
    usage_outbox_adopt_interval_s: float = Field(default=10.0, gt=0)

    @field_validator("auth_address")
    @classmethod
    def _one_target(cls, value: str) -> str:
        balanced_target("auth_address", value)
        return value

    def listening_ports(self) -> set[int]:
        ports = super().listening_ports()
        if self.http_port:
            ports.add(self.http_port)
        return ports
