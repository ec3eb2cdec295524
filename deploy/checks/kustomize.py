"""Renders a kustomization with the pinned kustomize (deploy/checks/kustomize.sh
installs it into .tools/ on first use), so the checks read what a user
applies with `kubectl apply -k`."""

from __future__ import annotations

import subprocess
from pathlib import Path

INSTALL = Path(__file__).with_name("kustomize.sh")


class KustomizeError(Exception):
    """kustomize could not be installed, or could not render a folder."""


def is_kustomization(directory: Path) -> bool:
    return (directory / "kustomization.yaml").is_file()


def kustomize_binary() -> Path:
    """The pinned binary, fetched and checked first if it is not there yet."""
    done = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise KustomizeError(f"cannot install kustomize: {done.stderr.strip()}")
    return Path(done.stdout.strip())


def render(directory: Path) -> str:
    """`kustomize build directory`: every object it yields, as YAML documents."""
    done = subprocess.run(
        [str(kustomize_binary()), "build", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise KustomizeError(done.stderr.strip())
    return done.stdout
