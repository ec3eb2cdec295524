"""What every tenant command (those that talk to the gateway with an API key)
takes and how it connects: shared by cli.py and the command groups beside it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from maas_cli.client import MaasClient
from maas_cli.connection import Connection
from maas_cli.output import bad_usage, failures

T = TypeVar("T")

DEV_KEY_FILE = Path(".maas/dev_api_key")

GatewayOption = Annotated[
    str, typer.Option("--gateway", envvar="MAAS_GATEWAY", help="host:port of the gateway")
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="MAAS_API_KEY", help="API key (default: .maas/dev_api_key)"),
]


def api_key(given: str | None) -> str:
    if given:
        return given
    if DEV_KEY_FILE.exists():
        return DEV_KEY_FILE.read_text().strip()
    bad_usage("no API key: pass --api-key, set MAAS_API_KEY, or run `make run`")


def client(gateway: str, given_key: str | None) -> MaasClient:
    return MaasClient(gateway, api_key(given_key), credentials=Connection.from_env().credentials())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a command's calls; a failed call exits with its gRPC status."""
    with failures():
        return asyncio.run(coro)
