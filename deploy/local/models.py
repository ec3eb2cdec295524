"""`make run`'s model list: which models the local stack serves, how, and
how many replicas of each, as configuration.

Two ways to write it, both read into `ModelEntry`s:

- `MODELS="tiny-llama tiny-embed:pooling tiny-llama-2:2"` (`--models`): names
  separated by spaces or commas, each `NAME[:RUNNER][:REPLICAS]`. A NAME with a
  "/" is a model directory (its last part names it); else the directory is
  <state-dir>/models/NAME.
- `MODELS_FILE=models.toml` (`--models-file`): a `[[models]]` table per model
  with `name`, and optionally `path` (relative to the file), `runner` and
  `replicas`; deploy/local/models.toml is one.

RUNNER is `generate` (the default) or `pooling` (an embedding model, served
by Embed and /v1/embeddings); REPLICAS (1 to 64) defaults to `--replicas`.

`python -m deploy.local.models --models ... --missing` prints, for each model
directory that does not exist yet and that a tiny local builder can make, the
builder's module and the directory: the Makefile builds those before it starts
the stack."""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Runner = Literal["generate", "pooling"]
RUNNERS: tuple[Runner, ...] = ("generate", "pooling")
# What builds a missing model directory, by its runner: the tiny local models
# (random weights, a real tokenizer, no download).
BUILDERS: dict[Runner, str] = {
    "generate": "local_models.tiny_llama",
    "pooling": "local_models.tiny_embed",
}
FILE_KEYS = frozenset({"name", "path", "runner", "replicas"})
# Replicas of one model: each is a process with its own engine on this one
# machine (a simulated one alone takes ~100 MB); past 64 it only thrashes.
MAX_REPLICAS = 64


class ModelListError(ValueError):
    """A model list that cannot be read; the message names the entry at fault."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of the list."""

    # The name clients ask for (and the replicas' process names).
    name: str
    # Its directory; None: <state-dir>/models/NAME.
    path: str | None = None
    runner: Runner = "generate"
    # Replicas of it; None: the stack's `--replicas`.
    replicas: int | None = None

    def directory(self, state_dir: Path) -> str:
        return self.path if self.path is not None else str(state_dir / "models" / self.name)


def _runner(text: object, where: str) -> Runner:
    if text not in RUNNERS:
        raise ModelListError(f"{where}: runner {text!r} is none of {', '.join(RUNNERS)}")
    return text


def _replicas(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICAS:
        raise ModelListError(f"{where}: replicas {value!r} is not a count of 1 to {MAX_REPLICAS}")
    return value


def parse_entry(text: str) -> ModelEntry:
    """One `NAME[:RUNNER][:REPLICAS]` of `--models`."""
    head, *options = text.split(":")
    if not head:
        raise ModelListError(f"{text!r}: no model name")
    runner: Runner = "generate"
    replicas: int | None = None
    for option in options:
        if option.isdigit():
            replicas = _replicas(int(option), repr(text))
        else:
            runner = _runner(option, repr(text))
    if "/" in head:
        return ModelEntry(Path(head).name, head, runner, replicas)
    return ModelEntry(head, None, runner, replicas)


def parse_models(text: str) -> list[ModelEntry]:
    """`--models`: entries separated by commas or spaces, each name once, in order."""
    entries = [parse_entry(item) for item in text.replace(",", " ").split()]
    return _unique(entries, "--models")


def read_models_file(path: Path) -> list[ModelEntry]:
    """`--models-file`: a TOML file of `[[models]]` tables."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ModelListError(f"{path}: {err}") from err
    tables = doc.get("models")
    if not isinstance(tables, list):
        raise ModelListError(f"{path}: no [[models]] tables")
    entries = []
    for i, table in enumerate(tables):
        entries.append(_file_entry(table, f"{path} models[{i}]", path.parent))
    return _unique(entries, str(path))


def _file_entry(table: dict[str, Any], where: str, base: Path) -> ModelEntry:
    unknown = sorted(set(table) - FILE_KEYS)
    if unknown:
        raise ModelListError(f"{where}: unknown key {', '.join(unknown)}")
    name = table.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise ModelListError(f"{where}: name must be a model name (no '/')")
    path = table.get("path")
    if path is not None and not isinstance(path, str):
        raise ModelListError(f"{where}: path must be a string")
    replicas = table.get("replicas")
    return ModelEntry(
        name,
        str(base / path) if path is not None else None,
        _runner(table.get("runner", "generate"), where),
        _replicas(replicas, where) if replicas is not None else None,
    )


def _unique(entries: list[ModelEntry], where: str) -> list[ModelEntry]:
    if not entries:
        raise ModelListError(f"{where}: needs at least one model")
    names = [entry.name for entry in entries]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ModelListError(f"{where}: {', '.join(twice)} named more than once")
    return entries


def missing_builds(entries: Sequence[ModelEntry], state_dir: Path) -> list[tuple[str, str]]:
    """(builder module, directory) for each model the tiny builders can make
    whose directory is not there yet: those of a name, not of a path given."""
    return [
        (BUILDERS[entry.runner], entry.directory(state_dir))
        for entry in entries
        if entry.path is None and not Path(entry.directory(state_dir)).is_dir()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reads make run's model list.")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--models", help="NAME[:RUNNER][:REPLICAS] entries")
    given.add_argument("--models-file", type=Path, help="a TOML file of [[models]] tables")
    parser.add_argument("--state-dir", type=Path, default=Path(".maas"))
    parser.add_argument(
        "--missing", action="store_true", help="print `BUILDER DIRECTORY` per model to build"
    )
    args = parser.parse_args(argv)
    try:
        entries = (
            read_models_file(args.models_file) if args.models_file else parse_models(args.models)
        )
    except ModelListError as err:
        print(f"model list: {err}", file=sys.stderr)
        return 2
    if args.missing:
        for module, directory in missing_builds(entries, args.state_dir):
            print(module, directory)
    else:
        for entry in entries:
            print(entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
