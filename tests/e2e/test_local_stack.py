"""`make run`'s launcher, for real: five processes, a dev key, a first
completion, then a clean SIGTERM shutdown of every service."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path


def free_port_block(size: int) -> int:
    """A base port with `size` consecutive free ports after it."""
    for _ in range(100):
        base = random.randrange(20_000, 60_000)
        try:
            for port in range(base, base + size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no block of free ports")


def test_local_stack_streams_a_completion_and_stops_cleanly(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "deploy.local_stack",
            "--model", str(tiny_model_path),
            "--state-dir", str(tmp_path),
            "--base-port", str(free_port_block(5)),
            "--exit-after-first",
        ],
        capture_output=True, text=True, timeout=600,
        # The HTTP face's default port is one per machine; test runs go side by side.
        env={**os.environ, "MAAS_GATEWAY_HTTP_PORT": "0"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "completion tokens" in output
    assert (tmp_path / "dev_api_key").read_text().startswith("maas_")
    for service in ("gateway", "router", "inference", "anomaly", "auth"):
        assert f"stopped {service} (exit 0)" in output, output
