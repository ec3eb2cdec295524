"""Copies of the real deploy files with one thing broken."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def copy_with(tmp_path: Path, files: list[str], edit: str, old: str, new: str) -> Path:
    """Copies `files` (paths under the repository) into tmp_path, replacing
    `old` by `new` in `edit`, where it must occur exactly once."""
    for name in files:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, target)
    path = tmp_path / edit
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {edit}"
    path.write_text(text.replace(old, new))
    return tmp_path


def named(problems: list[str], *parts: str) -> bool:
    """Whether one problem mentions every part."""
    return any(all(part in problem for part in parts) for problem in problems)
