"""`python3 requirements.py PYPROJECT [EXTRA]`: the project's runtime
dependencies (and an extra's), one a line, read from pyproject.toml.

The images install these in a layer of their own before the source is copied,
so an edit to the source reuses that layer instead of reinstalling gigabytes.
Standard library only: it runs in the bare base image."""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extra: str | None) -> list[str]:
    with open(pyproject, "rb") as file:
        project = tomllib.load(file)["project"]
    names: list[str] = list(project["dependencies"])
    if extra:
        names += project["optional-dependencies"][extra]
    return names


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)))
