"""What the deploy checks need from a Dockerfile: its stages, the build args
each stage can see, and the command each stage's image runs by default.

Not a full Dockerfile parser: enough of the syntax (continuations, comments,
`FROM ... AS`, `ARG`, exec- and shell-form `CMD`/`ENTRYPOINT`) for files
like this project's own."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    # The stage it is built FROM, when that is a stage of this file.
    parent: str | None
    # Stages it copies from (COPY --from=stage).
    copies_from: set[str] = field(default_factory=set)
    args: set[str] = field(default_factory=set)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    # Its RUN instructions, as written (continuations joined).
    runs: list[str] = field(default_factory=list)


@dataclass
class Dockerfile:
    stages: dict[str, Stage]
    # ARGs before the first FROM: usable in FROM lines only, unless a stage redeclares them.
    global_args: set[str]

    @property
    def last_stage(self) -> str:
        return list(self.stages)[-1]

    def chain(self, target: str) -> list[Stage]:
        """The target stage and the stages it is built on, nearest first."""
        stages: list[Stage] = []
        name: str | None = target
        while name is not None:
            stage = self.stages[name]
            stages.append(stage)
            name = stage.parent
        return stages

    def needed(self, target: str) -> list[Stage]:
        """Every stage that building `target` builds: its own chain and what
        it copies from, transitively."""
        seen: dict[str, Stage] = {}
        todo = [target]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            stage = seen[name] = self.stages[name]
            todo += [n for n in (stage.parent, *stage.copies_from) if n is not None]
        return list(seen.values())

    def build_args(self, target: str) -> set[str]:
        """Every build arg that building `target` can use."""
        names = set(self.global_args)
        for stage in self.needed(target):
            names |= stage.args
        return names

    def engine_installs(self, target: str) -> list[str]:
        """The stages that building `target` builds whose pip installs name the
        inference engine (torch, vLLM, the project's cpu or gpu extra)."""
        return [
            stage.name
            for stage in self.needed(target)
            if any("pip install" in run and _ENGINE.search(run) for run in stage.runs)
        ]

    def entrypoint(self, target: str) -> list[str]:
        """The target image's ENTRYPOINT, inherited from the stages it is built on."""
        return next((s.entrypoint for s in self.chain(target) if s.entrypoint is not None), [])

    def cmd(self, target: str) -> list[str]:
        """The target image's CMD, inherited from the stages it is built on."""
        return next((s.cmd for s in self.chain(target) if s.cmd is not None), [])


# What installs the engine: its packages by name, or the extras (and the
# requirement lists made from them) that bring it.
_ENGINE = re.compile(r"\b(torch|vllm(-cpu)?)\b(?![-.\w])|\[(cpu|gpu)\]|\b(cpu|gpu)\.txt\b")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, continuations joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line:
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    if pending:
        keyword, _, rest = pending.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _command(rest: str) -> list[str]:
    if rest.startswith("["):
        try:
            argv = json.loads(rest)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
                return argv
    return ["/bin/sh", "-c", rest]


def parse(text: str) -> Dockerfile:
    stages: dict[str, Stage] = {}
    global_args: set[str] = set()
    current: Stage | None = None
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = words[0] if words else ""
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            current = Stage(name=name, parent=base if base in stages else None)
            stages[name] = current
        elif keyword == "ARG":
            for word in shlex.split(rest):
                (current.args if current else global_args).add(word.partition("=")[0])
        elif keyword == "COPY" and current is not None:
            for word in rest.split():
                if word.startswith("--from=") and word[7:] in stages:
                    current.copies_from.add(word[7:])
        elif keyword == "RUN" and current is not None:
            current.runs.append(rest)
        elif keyword == "CMD" and current is not None:
            current.cmd = _command(rest)
        elif keyword == "ENTRYPOINT" and current is not None:
            current.entrypoint = _command(rest)
    return Dockerfile(stages=stages, global_args=global_args)


def load(path: Path) -> Dockerfile:
    return parse(path.read_text())
