"""`make run`'s model list (deploy/local/models.py) and what the stack makes
of it: an embedding model is an entry with runner pooling, each entry's
replicas start with its runner and name, and the router is told them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local.models import (
    ModelEntry,
    ModelListError,
    main,
    missing_builds,
    parse_models,
    read_models_file,
)
from deploy.local.stack import parse_args, service_specs
from services.inference.settings import InferenceSettings
from services.router.settings import RouterSettings

REPO = Path(__file__).resolve().parents[2]


def test_entries_name_a_runner_and_replicas_in_any_order() -> None:
    assert parse_models("tiny-llama, tiny-embed:pooling chat:2 e:3:pooling") == [
        ModelEntry("tiny-llama"),
        ModelEntry("tiny-embed", runner="pooling"),
        ModelEntry("chat", replicas=2),
        ModelEntry("e", runner="pooling", replicas=3),
    ]


def test_a_name_with_a_slash_is_a_directory_named_by_its_last_part() -> None:
    assert parse_models("/srv/models/bge:pooling") == [
        ModelEntry("bge", "/srv/models/bge", "pooling")
    ]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("a:embed", "runner 'embed'"),
        ("a:0", "replicas 0"),
        ("a:65", "replicas 65 is not a count of 1 to 64"),
        ("a:99999999999999999999", "replicas 99999999999999999999"),
        (":pooling", "no model name"),
        ("a b a:pooling", "a named more than once"),
        (" , ", "at least one model"),
    ],
)
def test_a_bad_entry_is_refused_naming_what_is_wrong(text: str, named: str) -> None:
    with pytest.raises(ModelListError, match=named):
        parse_models(text)


def test_the_shipped_models_file_is_a_chat_and_an_embedding_model() -> None:
    assert read_models_file(REPO / "deploy" / "local" / "models.toml") == [
        ModelEntry("tiny-llama"),
        ModelEntry("tiny-embed", runner="pooling", replicas=1),
    ]


def test_a_models_file_path_is_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nname = "e"\npath = "w/e"\nrunner = "pooling"\nreplicas = 2\n')
    assert read_models_file(path) == [ModelEntry("e", str(tmp_path / "w/e"), "pooling", 2)]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[[models]]\nname = "a"\nrunners = "pooling"\n', "unknown key runners"),
        ('[[models]]\nname = "a"\nreplicas = "2"\n', "replicas '2'"),
        ('[[models]]\nname = "a"\nreplicas = 1000000\n', "replicas 1000000 is not a count of 1 to"),
        ('[[models]]\nname = "a"\nreplicas = inf\n', "replicas inf"),
        ('[[models]]\nname = "a/b"\n', "name must be a model name"),
        ('[model]\nname = "a"\n', r"no \[\[models\]\] tables"),
        ("[[models]\n", "models.toml"),
    ],
)
def test_a_bad_models_file_is_refused_naming_what_is_wrong(
    tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(ModelListError, match=named):
        read_models_file(path)


def test_the_makefile_builds_each_named_model_that_is_missing_with_its_runners_builder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "models" / "tiny-llama").mkdir(parents=True)
    entries = parse_models("tiny-llama tiny-embed:pooling other:2 /elsewhere/given")
    assert missing_builds(entries, tmp_path) == [
        ("local_models.tiny_embed", str(tmp_path / "models" / "tiny-embed")),
        ("local_models.tiny_llama", str(tmp_path / "models" / "other")),
    ]
    args = ["--models", "tiny-llama tiny-embed:pooling", "--state-dir", str(tmp_path)]
    assert main([*args, "--missing"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"local_models.tiny_embed {tmp_path / 'models' / 'tiny-embed'}"
    ]
    assert main(["--models", "a:nope", "--missing"]) == 2


def test_each_entry_starts_its_replicas_with_its_runner_behind_the_one_router(
    tmp_path: Path,
) -> None:
    args = parse_args(
        [
            *("--state-dir", str(tmp_path), "--base-port", "40000", "--replicas", "2"),
            *("--models", "tiny-llama tiny-embed:pooling:1 /srv/bge:pooling"),
        ]
    )
    specs = service_specs(args, tmp_path)
    replicas = [s for s in specs if s.module == "services.inference"]
    assert [s.name for s in replicas] == [
        "inference-tiny-llama-1",
        "inference-tiny-llama-2",
        "inference-tiny-embed",
        "inference-bge-1",
        "inference-bge-2",
    ]
    served = [InferenceSettings.from_cli(s.args) for s in replicas]
    assert [(s.model_name, s.runner) for s in served] == [
        ("tiny-llama", "generate"),
        ("tiny-llama", "generate"),
        ("tiny-embed", "pooling"),
        ("bge", "pooling"),
        ("bge", "pooling"),
    ]
    assert served[2].model == str(tmp_path / "models" / "tiny-embed")
    assert served[3].model == "/srv/bge"
    # Separate processes: each engine keeps its own vLLM metrics.
    assert all(s.engine_metrics for s in served)
    assert len({s.port for s in specs}) == len(specs)
    router = RouterSettings.from_cli(next(s for s in specs if s.module == "services.router").args)
    assert router.replicas == [f"127.0.0.1:{s.port}" for s in replicas]


def test_a_models_file_runs_as_its_entries_say(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nname = "chat"\npath = "dirs/llama"\n')
    args = parse_args(["--state-dir", str(tmp_path), "--models-file", str(path)])
    [replica] = [s for s in service_specs(args, tmp_path) if s.module == "services.inference"]
    served = InferenceSettings.from_cli(replica.args)
    # The directory's name is not the entry's: the entry names the model.
    assert (served.model, served.model_name) == (str(tmp_path / "dirs" / "llama"), "chat")


@pytest.mark.parametrize(
    "argv",
    [
        ["--models", "a", "--models-file", str(REPO / "deploy" / "local" / "models.toml")],
        ["--model", "x", "--models-file", str(REPO / "deploy" / "local" / "models.toml")],
        ["--engine", "sim", "--models", "chat e:pooling"],
        ["--models", "a:embed"],
    ],
)
def test_refused_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


@pytest.mark.parametrize("option", ["--console-port", "--metrics-base-port"])
@pytest.mark.parametrize("hostile", ["70000", "-1", "http"])
def test_a_port_flag_out_of_range_is_refused_naming_it(
    option: str, hostile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(["--engine", "sim", option, hostile])
    assert refused.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "hostile"),
    [
        ("--replicas", "65"),
        ("--gateway-replicas", "100000"),
        ("--auth-replicas", "100000"),
        ("--adapter-slots", "257"),
    ],
)
def test_a_count_flag_past_its_bound_is_refused_naming_it(
    option: str, hostile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(["--engine", "sim", option, hostile])
    assert refused.value.code == 2
    assert option in capsys.readouterr().err


def test_the_port_flags_take_their_whole_range() -> None:
    args = parse_args(["--engine", "sim", "--console-port", "65535", "--metrics-base-port", "0"])
    assert (args.console_port, args.metrics_base_port) == (65535, 0)
