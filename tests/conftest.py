"""Session-wide fixtures: the tiny model (built once, cached in .maas/) and
ONE real vLLM engine for the whole test session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from services.inference.settings import InferenceSettings, cpu_engine_environment

# Before anything imports vLLM.
for _key, _value in cpu_engine_environment().items():
    os.environ.setdefault(_key, _value)

# The in-process mesh and its tenants, one per session for every folder that asks.
pytest_plugins = ["tests.mesh"]

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / ".maas" / "models" / "tiny-llama"
EMBED_MODEL_DIR = REPO / ".maas" / "embed" / "tiny-embed"


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from local_models.tiny_llama import build_tiny_model

    return build_tiny_model(MODEL_DIR)


@pytest_asyncio.fixture(scope="session")
async def vllm_engine(tiny_model_path: Path) -> AsyncIterator[object]:
    from services.inference.vllm_engine import open_vllm_engine

    settings = InferenceSettings(
        model=str(tiny_model_path),
        kv_cache_memory_bytes=512 * 1024 * 1024,
        enforce_eager=True,
        max_num_seqs=64,
    )
    async with open_vllm_engine(settings) as engine:
        yield engine


@pytest_asyncio.fixture(scope="session")
async def vllm_embed_engine() -> AsyncIterator[object]:
    """The tiny embedding model on vLLM's pooling runner, once per session;
    pooling keeps no KV cache between steps, so a small one does."""
    from local_models.tiny_embed import build_tiny_embed_model
    from services.inference.vllm_engine import open_vllm_engine

    settings = InferenceSettings(
        model=str(build_tiny_embed_model(EMBED_MODEL_DIR)),
        runner="pooling",
        # The generation engine of this session keeps vLLM's metrics registry.
        engine_metrics=False,
        kv_cache_memory_bytes=64 * 1024 * 1024,
        enforce_eager=True,
        max_num_seqs=64,
    )
    async with open_vllm_engine(settings) as engine:
        yield engine


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis on loopback (auth's shared quota state), started by the
    test run like PostgreSQL. Shared by the session: each test keeps to its
    own key prefix (see tests/auth/conftest.py), nothing is flushed."""
    out = subprocess.run(
        ["bash", str(REPO / "deploy" / "local" / "redis.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]
