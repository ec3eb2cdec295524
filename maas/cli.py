"""`maas`: the command-line client of the gateway."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.table import Table

from maas.client import MaasClient

DEV_KEY_FILE = Path(".maas/dev_api_key")

app = typer.Typer(help="Talk to a MaaS mesh gateway.", no_args_is_help=True)
console = Console()

GatewayOption = Annotated[
    str, typer.Option("--gateway", envvar="MAAS_GATEWAY", help="host:port of the gateway")
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="MAAS_API_KEY", help="API key (default: .maas/dev_api_key)"),
]


def _api_key(given: str | None) -> str:
    if given:
        return given
    if DEV_KEY_FILE.exists():
        return DEV_KEY_FILE.read_text().strip()
    raise typer.BadParameter("no API key: pass --api-key, set MAAS_API_KEY, or run `make run`")


def _run(coro: object) -> None:
    try:
        asyncio.run(coro)  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as err:
        console.print(f"[red]{err.code().name}[/red]: {err.details()}", highlight=False)
        raise typer.Exit(1) from None


async def _default_model(client: MaasClient) -> str:
    models = await client.list_models()
    if not models:
        raise typer.BadParameter("the mesh serves no model right now")
    return models[0].name


@app.command()
def generate(
    prompt: str,
    gateway: GatewayOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
    model: Annotated[
        str | None, typer.Option(help="model name (default: the first served)")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.8,
    seed: int | None = None,
    chat: Annotated[bool, typer.Option(help="send the prompt as a user chat turn")] = True,
) -> None:
    """Streams a completion to stdout as it is generated."""

    async def main() -> None:
        async with MaasClient(gateway, _api_key(api_key)) as client:
            name = model or await _default_model(client)
            stream = client.generate(
                name,
                prompt=None if chat else prompt,
                messages=[("user", prompt)] if chat else (),
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
            )
            usage = None
            async for chunk in stream:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                usage = chunk.usage
            sys.stdout.write("\n")
            if usage is not None:
                console.print(
                    f"[dim]{usage.prompt_tokens} prompt + {usage.completion_tokens} "
                    "completion tokens[/dim]"
                )

    _run(main())


@app.command()
def models(gateway: GatewayOption = "127.0.0.1:50051", api_key: KeyOption = None) -> None:
    """Lists the models the mesh serves."""

    async def main() -> None:
        async with MaasClient(gateway, _api_key(api_key)) as client:
            table = Table("model", "context length")
            for info in await client.list_models():
                table.add_row(info.name, str(info.max_context_length))
            console.print(table)

    _run(main())


@app.command()
def usage(gateway: GatewayOption = "127.0.0.1:50051", api_key: KeyOption = None) -> None:
    """Shows your own token usage."""

    async def main() -> None:
        async with MaasClient(gateway, _api_key(api_key)) as client:
            summary = await client.usage()
            table = Table("tenant", "requests", "prompt tokens", "completion tokens")
            table.add_row(
                summary.tenant_id,
                str(summary.requests),
                str(summary.prompt_tokens),
                str(summary.completion_tokens),
            )
            console.print(table)

    _run(main())


def main() -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    app()


if __name__ == "__main__":
    main()
