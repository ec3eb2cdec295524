"""Runs the `maas` command line in-process against the test mesh."""

from __future__ import annotations

import asyncio

from typer.testing import CliRunner, Result

from maas_cli.cli import app
from tests.mesh import Mesh

# Wide enough that rich neither wraps nor cuts a row of any table.
WIDE = 250


async def invoke(mesh: Mesh, *args: str, columns: int = WIDE, stdin: str | None = None) -> Result:
    """Runs the CLI in a thread (it runs its own event loop); the mesh's
    addresses and operator token come from the environment, as a user's would."""
    env = {
        "MAAS_GATEWAY": mesh.gateway,
        "MAAS_AUTH": mesh.targets["auth"],
        "MAAS_ADMIN_TOKEN": mesh.admin_token,
        "COLUMNS": str(columns),
    }
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), input=stdin, env=env)


async def maas(mesh: Mesh, *args: str, columns: int = WIDE, stdin: str | None = None) -> Result:
    """Runs the CLI and expects it to succeed."""
    result = await invoke(mesh, *args, columns=columns, stdin=stdin)
    assert result.exit_code == 0, result.output
    return result
