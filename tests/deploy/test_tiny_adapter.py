"""`make run` builds the dev tenant's tiny adapter once per state dir; at
each later start it finds it without importing torch (over a second)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from local_models.tiny_llama import build_tiny_adapter

REPO = Path(__file__).resolve().parents[2]


def test_an_adapter_built_before_is_found_without_torch(tmp_path: Path) -> None:
    built = build_tiny_adapter(tmp_path / "adapter")
    weights = built / "adapter_model.safetensors"
    written = weights.stat().st_mtime_ns
    probe = (
        "import sys; from pathlib import Path;"
        "from local_models.tiny_llama import build_tiny_adapter;"
        f"print(build_tiny_adapter(Path({str(built)!r})), 'torch' in sys.modules)"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert found.stdout.split() == [str(built), "False"], found.stderr
    assert weights.stat().st_mtime_ns == written
