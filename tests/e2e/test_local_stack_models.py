"""`make run MODELS="a b"`: the launcher starts REPLICAS inference replicas of
each model, every one behind the one router, each told its own model."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local.stack import build_parser, parse_args, service_specs
from services.inference.settings import InferenceSettings
from services.router.settings import RouterSettings


def test_each_model_gets_its_replicas_behind_the_one_router(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            *("--engine", "sim", "--base-port", "40000"),
            "--models",
            "chat-a, chat-b",
            "--replicas",
            "2",
        ]
    )
    specs = service_specs(args, tmp_path)
    replicas = [s for s in specs if s.module == "services.inference"]
    assert [s.name for s in replicas] == [
        "inference-chat-a-1",
        "inference-chat-a-2",
        "inference-chat-b-1",
        "inference-chat-b-2",
    ]
    served = [InferenceSettings.from_cli(s.args) for s in replicas]
    assert [s.model_name for s in served] == ["chat-a", "chat-a", "chat-b", "chat-b"]
    assert [s.port for s in served] == [s.port for s in replicas]
    assert len({s.port for s in specs}) == len(specs)
    router = RouterSettings.from_cli(next(s for s in specs if s.module == "services.router").args)
    assert router.replicas == [f"127.0.0.1:{s.port}" for s in replicas]


def test_with_vllm_a_model_name_is_a_directory_under_the_state_dir(tmp_path: Path) -> None:
    args = parse_args(["--state-dir", str(tmp_path), "--models", "tiny-llama tiny-llama-2"])
    replicas = [s for s in service_specs(args, tmp_path) if s.module == "services.inference"]
    assert [s.name for s in replicas] == ["inference-tiny-llama", "inference-tiny-llama-2"]
    models = [InferenceSettings.from_cli(s.args).model for s in replicas]
    assert models == [
        str(tmp_path / "models" / "tiny-llama"),
        str(tmp_path / "models" / "tiny-llama-2"),
    ]


def test_one_model_keeps_the_names_it_always_had(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--engine", "sim", "--models", "only", "--replicas", "2"])
    replicas = [s for s in service_specs(args, tmp_path) if s.module == "services.inference"]
    assert [s.name for s in replicas] == ["inference-1", "inference-2"]


def test_model_and_models_are_one_or_the_other() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--model", "x", "--models", "y"])
