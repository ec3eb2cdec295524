"""`make run`'s progress and banner: each start-up step named with its time,
and every address the banner names answers (gRPC, the OpenAI base URL,
each process's metrics)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx

from maas_cli.client import MaasClient
from tests.e2e.test_local_stack import free_port_block

REPO = Path(__file__).resolve().parents[2]
# The five processes of one of each, and after them their metrics ports and the HTTP face's.
PROCESSES = 5


async def read_until(stream: asyncio.StreamReader, marker: str, seen: list[str]) -> None:
    while marker not in (line := (await stream.readline()).decode()):
        if not line:
            raise AssertionError("the stack ended early:\n" + "".join(seen))
        seen.append(line)
    seen.append(line)


async def test_the_banner_names_addresses_that_answer(tmp_path: Path) -> None:
    base = free_port_block(2 * PROCESSES + 1)
    metrics_base = base + PROCESSES
    http_port = base + 2 * PROCESSES
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deploy.local.stack",
        "--engine", "sim", "--sim-profile", "tiny-cpu",
        "--state-dir", str(tmp_path), "--base-port", str(base),
        "--metrics-base-port", str(metrics_base),
        cwd=REPO, env={**os.environ, "MAAS_GATEWAY_HTTP_PORT": str(http_port), "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    seen: list[str] = []
    try:
        await asyncio.wait_for(read_until(process.stdout, "mesh is up", seen), 120)
        output = "".join(seen)
        # Progress: each step by name, each service as it becomes ready, each with its time.
        assert re.search(r"==> start 5 processes", output), output
        for service in ("auth", "inference", "router", "anomaly", "gateway"):
            assert re.search(rf"{service} serving after \d+\.\d s", output), output
        steps = re.findall(r"^==> (.+)$", output, re.MULTILINE)
        assert steps == [
            "start 5 processes (simulated engines: tiny-cpu)",
            "make sure the dev tenant and its API key exist",
            "start the web console",
            "a first completion through gateway",
            "a first completion with a private adapter on tiny-cpu",
        ], output
        assert len(re.findall(r"done in \d+\.\d s", output)) == len(steps), output

        banner = dict(
            re.findall(r"^  (gRPC \(gateway\)|OpenAI base URL \(gateway\)|web console"
                       r"|metrics \(\w+\))\s+(\S+)$", output, re.MULTILINE)
        )  # fmt: skip
        assert banner["gRPC (gateway)"] == f"127.0.0.1:{base}"
        base_url = banner["OpenAI base URL (gateway)"]
        assert base_url == f"http://127.0.0.1:{http_port}/v1"
        metrics = [url for what, url in banner.items() if what.startswith("metrics")]
        assert len(metrics) == PROCESSES

        api_key = (tmp_path / "dev_api_key").read_text().strip()
        async with MaasClient(banner["gRPC (gateway)"], api_key) as client:
            # The served model, and the dev tenant's own adapter made by the last step.
            served = {m.name: m.base_model for m in await client.list_models()}
            assert served == {"tiny-cpu": "", "dev-first-adapter": "tiny-cpu"}
        async with httpx.AsyncClient() as http:
            models = await http.get(
                f"{base_url}/models", headers={"authorization": f"Bearer {api_key}"}
            )
            assert models.status_code == 200, models.text
            for url in metrics:
                assert (await http.get(url)).status_code == 200, url
            # The console's sign-in page.
            signin = await http.get(banner["web console"] + "signin")
            assert signin.status_code == 200, signin.text
            # The gateway has served the first completion: its metrics are not empty.
            scraped = await http.get(banner["metrics (gateway)"])
            assert "# TYPE" in scraped.text
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
