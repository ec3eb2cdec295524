"""`make run ADAPTER_SLOTS=N`: generation replicas hold tenants' private
adapters, fetched from auth's registry; embedding replicas hold none. For
real (simulated engines, mutual TLS on every hop): the stack uploads a tiny
adapter for the dev tenant through the gateway and streams a completion with
it by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local.stack import (
    ADAPTER_NAME,
    DEFAULT_ADAPTER_SLOTS,
    adapter_base,
    build_parser,
    parse_args,
    service_specs,
)
from deploy.local.throwaway_ca import write_throwaway_ca
from local_models.tiny_llama import COMPLETE_MARKER
from services.inference.settings import InferenceSettings
from tests.e2e.test_local_stack import free_port_block


def inference_settings(
    args: list[str], tmp_path: Path, *, tls: bool = False
) -> list[InferenceSettings]:
    certs = write_throwaway_ca(tmp_path / "tls") if tls else None
    launches = service_specs(build_parser().parse_args(args), tmp_path, certs)
    return [
        InferenceSettings.from_cli(s.args) for s in launches if s.module == "services.inference"
    ]


def test_generation_replicas_get_slots_and_the_registry_embedding_replicas_no_slots(
    tmp_path: Path,
) -> None:
    args = ["--models", "chat:generate:2, embed:pooling", "--base-port", "40000"]
    chat_1, chat_2, embed = inference_settings(args, tmp_path, tls=True)
    for chat in (chat_1, chat_2):
        assert chat.adapter_slots == DEFAULT_ADAPTER_SLOTS
        # Auth's port in the stack's block; over the same mutual TLS as every inner hop.
        assert chat.registry_address == "127.0.0.1:40001"
        assert chat.tls.require_client_cert and chat.tls.cert is not None
    assert embed.adapter_slots == 0


def test_the_registry_is_every_auth_replica(tmp_path: Path) -> None:
    args = ["--engine", "sim", "--auth-replicas", "2", "--base-port", "40000"]
    (replica,) = inference_settings(args, tmp_path)
    # auth's own port in the block, its second replica's after the block.
    assert replica.registry_address == "127.0.0.1:40001,127.0.0.1:40005"


def test_zero_slots_turns_private_adapters_off(tmp_path: Path) -> None:
    args = ["--engine", "sim", "--replicas", "2", "--adapter-slots", "0"]
    assert [s.adapter_slots for s in inference_settings(args, tmp_path)] == [0, 0]
    assert adapter_base(parse_args(args)) is None
    with pytest.raises(SystemExit):
        build_parser().parse_args([*args[:-1], "-1"])


def test_the_first_adapter_goes_on_a_simulated_model_or_the_tiny_local_one_only(
    tmp_path: Path,
) -> None:
    assert adapter_base(parse_args(["--engine", "sim", "--models", "a, b"])) == "a"
    tiny, other = tmp_path / "models" / "tiny-llama", tmp_path / "models" / "other"
    for directory, marker in ((tiny, "tiny-llama"), (other, "tiny-embed")):
        directory.mkdir(parents=True)
        (directory / COMPLETE_MARKER).write_text(f"{marker}\n")
    # The tiny adapter's shapes fit only the tiny local model; another gets no first adapter.
    assert adapter_base(parse_args(["--model", str(other)])) is None
    both = ["--state-dir", str(tmp_path), "--models", "other:pooling, tiny-llama"]
    assert adapter_base(parse_args(both)) == "tiny-llama"


def test_a_tenant_generates_with_a_fresh_adapter_on_a_tls_stack(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "deploy.local.stack",
            "--engine", "sim", "--sim-profile", "tiny-cpu",
            "--replicas", "2", "--tls",
            "--state-dir", str(tmp_path),
            "--base-port", str(free_port_block(6)),
            "--exit-after-first",
        ],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MAAS_GATEWAY_HTTP_PORT": "0"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"First completion from {ADAPTER_NAME}" in output, output
    # The base model's completion, then the adapter's.
    assert output.count("completion tokens") == 2, output
    assert (tmp_path / "adapters" / ADAPTER_NAME / "adapter_model.safetensors").is_file()
