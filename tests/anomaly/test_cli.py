"""`maas alerts` against a real anomaly server."""

from __future__ import annotations

import asyncio

from typer.testing import CliRunner, Result

from maas_cli.cli import app
from observability import Telemetry
from services.anomaly.core import AnomalyCore
from tests.anomaly.support import feed, start, stuffing
from tests.support import eventually

# Wide enough that rich neither wraps nor truncates a row.
WIDE = {"COLUMNS": "250"}


async def invoke(*args: str) -> Result:
    # The CLI runs its own event loop, so it gets a thread of its own.
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=WIDE)


async def test_alerts_prints_a_table(telemetry: Telemetry) -> None:
    core = AnomalyCore()
    feed(core, stuffing("ipv4:203.0.113.5"))
    async with start(telemetry, core) as server:
        target = f"127.0.0.1:{server.port}"
        result = await invoke("alerts", "--target", target)
        assert result.exit_code == 0, result.output
        assert "auth_failure_burst" in result.output
        assert "source:ipv4:203.0.113.5" in result.output
        assert "critical" in result.output

        result = await invoke("alerts", "--target", target, "--kind", "error_burst")
        assert result.exit_code == 0, result.output
        assert "203.0.113.5" not in result.output

        result = await invoke("alerts", "--target", target, "--min-severity", "loud")
        assert result.exit_code != 0


async def test_alerts_watch_prints_alerts_as_they_come(telemetry: Telemetry) -> None:
    core = AnomalyCore()
    async with start(telemetry, core) as server:
        watching = asyncio.create_task(
            invoke("alerts", "--watch", "--limit", "1", "--target", f"127.0.0.1:{server.port}")
        )
        await eventually(lambda: core.watchers == 1)
        feed(core, stuffing("ipv4:198.51.100.77"))
        result = await asyncio.wait_for(watching, 15)
        assert result.exit_code == 0, result.output
        assert "auth_failure_burst source:ipv4:198.51.100.77" in result.output


async def test_alerts_reports_an_unreachable_service() -> None:
    result = await invoke("alerts", "--target", "127.0.0.1:1")
    assert result.exit_code == 14  # UNAVAILABLE's gRPC status code
    assert "UNAVAILABLE" in result.stderr
    assert result.stdout == ""
