"""Inference settings: flags over `MAAS_INFERENCE_*` env over defaults.

Engine flags pass through to vLLM as typed settings; what the CPU needs
(an explicit KV-cache size, eager mode) is set by whoever runs it here,
never branched on in the engine code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.balanced import balanced_target
from services.common.settings import ServiceSettings
from services.inference.sim_profiles import DEFAULT_PROFILE, PROFILES

# Private adapters held at once: each stays in vLLM's CPU cache (max_cpu_loras)
# and can take max_adapter_bytes of host memory; 256 of a 7B model's rank-16
# adapters (~40 MB) is already 10 GB.
MAX_ADAPTER_SLOTS = 256
# vLLM's highest supported LoRA rank.
MAX_LORA_RANK = 512
# A rank-512 adapter of every linear layer of a 70B model is ~13 GiB in fp16.
MAX_ADAPTER_BYTES = 16 << 30


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAAS_INFERENCE_", env_nested_delimiter="__", extra="forbid"
    )

    # Address settings that take every replica of the service they name, as
    # a comma-separated list (deploy/local/stack.py gives them all).
    balanced_address_fields: ClassVar[frozenset[str]] = frozenset({"registry_address"})

    port: int = 50054
    model: str = Field(description="model directory or hub name; with engine=sim, just its name")
    # "sim": a simulated engine (sim_engine.py) that behaves like vLLM on the
    # accelerator `sim_profile` names, with no model and no vLLM import.
    engine: Literal["vllm", "sim"] = "vllm"
    sim_profile: str = Field(default=DEFAULT_PROFILE, description="see sim_profiles.py")
    served_model_name: str | None = Field(
        default=None, description="name clients use; default: the model directory's name"
    )
    # What /v1/models and ListModels say of the model (the engine cannot know).
    owner: str = Field(default="maas", max_length=64, description="who publishes the model")
    description: str = Field(default="", max_length=512, description="for people choosing a model")
    # "pooling": the model serves embeddings (Embed), not generation; "auto":
    # vLLM decides from the model's architecture.
    runner: Literal["auto", "generate", "pooling"] = "auto"
    # vLLM's own `vllm:*` Prometheus metrics (served beside the service's). They
    # live in one process-wide registry that each new engine takes over, so a
    # second engine in one process (tests) turns them off to keep the first's.
    engine_metrics: bool = True
    max_model_len: int | None = Field(default=None, ge=16)
    max_num_seqs: int = Field(default=64, ge=1)
    kv_cache_memory_bytes: int | None = Field(default=None, ge=1)
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    enable_prefix_caching: bool = True
    quantization: str | None = None
    # LoRA adapters served on top of the model: name -> adapter directory. Each
    # name is a model clients can ask for.
    lora_modules: dict[str, str] = Field(default_factory=dict)
    # vLLM sets GPU room aside at start for each adapter a batch may hold;
    # bounded as the slots are.
    max_loras: int = Field(
        default=4, ge=1, le=MAX_ADAPTER_SLOTS, description="adapters in one batch"
    )
    max_lora_rank: int = Field(default=16, ge=1, le=MAX_LORA_RANK)
    # Tenants' private adapters (InferenceGenerateRequest.adapter_id) held
    # loaded at once, fetched from the adapter registry on a miss; past that
    # the least recently used idle one is unloaded. 0: serves none; more
    # needs registry_address.
    adapter_slots: int = Field(default=0, ge=0, le=MAX_ADAPTER_SLOTS)
    # The adapter registry (auth's replicas, one channel balanced round robin:
    # services/common/balanced.py) private adapters are fetched from.
    registry_address: str | None = None
    # Where fetched adapters' files go; default: a temporary directory removed at shutdown.
    adapter_cache_dir: Path | None = None
    # The largest adapter weights fetched (a rank-64 adapter of a 70B model is ~1 GiB).
    max_adapter_bytes: int = Field(default=1 << 30, ge=1, le=MAX_ADAPTER_BYTES)
    # A simulated private adapter's load: a rank-16 adapter of a 7-8B model
    # (~40 MB) read from local disk and copied to the GPU by vLLM's add_lora
    # takes about a tenth of a second.
    # At most a minute: a large adapter from a slow disk.
    sim_adapter_load_s: float = Field(default=0.1, ge=0, le=60)
    # Grammar backend for json_schema/regex; both support compact JSON.
    structured_outputs_backend: Literal["xgrammar", "guidance"] = "xgrammar"
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "auto"
    seed: int = 0
    # "priority": waiting requests run in the order of the priority each one
    # carries (set by the router), then first come, first served.
    scheduling_policy: Literal["priority", "fcfs"] = "priority"
    # Streamed messages per second over all streams; past it, tokens are
    # batched into fewer messages (see pacing.py). 0: one message per delta.
    # At most a million: past what any process sends.
    stream_messages_per_s: float = Field(default=1000.0, ge=0, le=1_000_000)
    # An engine with unfinished requests that has not stepped for this long
    # is wedged: the service turns NOT_SERVING and exits non-zero. Far above
    # any one step (a long prefill on CPU takes seconds), so load never trips it.
    engine_stall_s: float = Field(default=30.0, gt=0)

    @field_validator("registry_address")
    @classmethod
    def _one_target(cls, value: str | None) -> str | None:
        if value is not None:
            balanced_target("registry_address", value)
        return value

    @field_validator("sim_profile")
    @classmethod
    def _known_profile(cls, name: str) -> str:
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}")
        return name

    @model_validator(mode="after")
    def _slots_need_a_generating_model_and_a_registry(self) -> Self:
        if self.adapter_slots > 0 and self.runner == "pooling":
            raise ValueError(
                f"adapter_slots {self.adapter_slots} on an embedding (pooling) model, which "
                "takes no adapter: set none"
            )
        # Else every private adapter would be NOT_FOUND, silently, on a replica
        # the router believes holds adapters.
        if self.adapter_slots > 0 and self.registry_address is None:
            raise ValueError(
                f"adapter_slots {self.adapter_slots} needs registry_address (auth's adapter "
                "registry, where private adapters are fetched from): give it, or adapter_slots 0"
            )
        return self

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.model).name


def cpu_engine_environment() -> dict[str, str]:
    """What vLLM's CPU build needs in the environment before it is imported:
    the model run inside the engine-core process (no worker process: faster
    start, less memory), no telemetry calls home, no hub look-ups.

    The model's threads leave one core to the serving process: without a
    worker process vLLM binds no threads, torch takes every core, and the
    gRPC side then preempts the engine mid-step. Measured on 2 cores (tiny
    model, 16 streams): the service went from 0.85-0.88 of in-process
    AsyncLLM's tokens/s to 0.94, and the engine alone got no slower."""
    return {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_TARGET_DEVICE": "cpu",
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) - 1)),
    }
