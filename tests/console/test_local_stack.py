"""`make run` starts the console beside the mesh, names its address in the
banner, and stops it with the rest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_local_stack import free_port_block


def test_make_run_serves_the_console_and_names_its_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "deploy.local.stack",
            "--engine", "sim", "--sim-profile", "tiny-cpu",
            "--state-dir", str(tmp_path),
            "--base-port", str(free_port_block(5)),
            "--exit-after-first",
        ],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MAAS_GATEWAY_HTTP_PORT": "0"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"^  web console\s+http://127\.0\.0\.1:\d+/$", output, re.MULTILINE), output
    assert "stopped console (exit 0)" in output, output
    assert "stopped gateway (exit 0)" in output, output
