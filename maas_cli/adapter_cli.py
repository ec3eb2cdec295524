"""`maas adapter create|list|delete`: the caller's tenant's private LoRA
adapters, through the gateway with an API key (create and delete need the
`adapters` scope; any key of the tenant lists). An adapter is used as a model:
its name in `maas generate --model NAME` or an OpenAI client's `model`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import grpc
import typer

from maas.v1 import adapter_pb2
from maas_cli.adapter_files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterFileError,
    checked_files,
    missing_files,
)
from maas_cli.gateway_options import GatewayOption, KeyOption, client, run
from maas_cli.output import JsonOption, bad_usage, fail, print_rows
from maas_cli.statement_report import rfc3339
from services.common.adapter_limits import DEFAULT_MAX_WEIGHTS_BYTES, MAX_WEIGHTS_BYTES

adapter_app = typer.Typer(
    help="Your tenant's private LoRA adapters, used by name as models.", no_args_is_help=True
)
COLUMNS = ("name", "base_model", "rank", "size_bytes", "adapter_id", "create_time")


def adapter_dict(adapter: adapter_pb2.Adapter) -> dict[str, Any]:
    return {
        "name": adapter.name,
        "base_model": adapter.base_model,
        "rank": adapter.rank,
        "size_bytes": adapter.size_bytes,
        "sha256": adapter.sha256,
        "adapter_id": adapter.adapter_id,
        "create_time": rfc3339(adapter.create_time),
    }


def _show(adapters: list[adapter_pb2.Adapter], as_json: bool) -> None:
    print_rows([adapter_dict(a) for a in adapters], COLUMNS, as_json)


@adapter_app.command("create")
def adapter_create(
    name: Annotated[str, typer.Argument(help="the model name to use it by")],
    directory: Annotated[
        Path, typer.Argument(help=f"holding {CONFIG_FILE} and {WEIGHTS_FILE} (PEFT's layout)")
    ],
    base_model: Annotated[str, typer.Option(help="the served model it was trained on")],
    max_bytes: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_WEIGHTS_BYTES,
            help="the most bytes of weights to send: the registry's --max-adapter-bytes",
        ),
    ] = DEFAULT_MAX_WEIGHTS_BYTES,
    gateway: GatewayOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Uploads an adapter (needs a key with the `adapters` scope). The weights
    are streamed from disk; a file over --max-bytes is refused unread."""
    missing = missing_files(directory)
    if missing:
        bad_usage(f"no {', '.join(missing)}")
    try:
        files = checked_files(directory, max_bytes)
    except AdapterFileError as err:
        fail(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    config = files.config_json()

    async def main() -> adapter_pb2.Adapter:
        async with client(gateway, api_key) as gate:
            return await gate.create_adapter(name, base_model, config, files.weight_chunks())

    _show([run(main())], as_json)


@adapter_app.command("list")
def adapter_list(
    gateway: GatewayOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lists your tenant's adapters."""

    async def main() -> list[adapter_pb2.Adapter]:
        async with client(gateway, api_key) as gate:
            return await gate.list_adapters()

    _show(run(main()), as_json)


@adapter_app.command("delete")
def adapter_delete(
    name: str,
    gateway: GatewayOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deletes one of your tenant's adapters (needs the `adapters` scope)."""

    async def main() -> adapter_pb2.Adapter:
        async with client(gateway, api_key) as gate:
            return await gate.delete_adapter(name)

    _show([run(main())], as_json)


def register(app: typer.Typer) -> None:
    """Adds `maas adapter`."""
    app.add_typer(adapter_app, name="adapter")
