"""How a check's command line reads its one argument and reports."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def checked_path(argv: Sequence[str] | None, default: Path) -> Path:
    """The file or folder named on the command line; `default` if none is."""
    args = list(sys.argv[1:] if argv is None else argv)
    return Path(args[0]) if args else default


def report(problems: list[str], subject: str) -> int:
    """Prints each problem to stderr, or that `subject` has none; the exit status."""
    for text in problems:
        print(text, file=sys.stderr)
    if not problems:
        print(f"{subject}: no problems")
    return 1 if problems else 0
