"""`maas`: the command-line client of the gateway."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import grpc
import typer
from google.protobuf import timestamp_pb2
from rich.table import Table

from maas.v1 import (
    anomaly_pb2,
    anomaly_pb2_grpc,
    generation_pb2,
    metering_pb2,
    metering_pb2_grpc,
    usage_pb2,
)
from maas_cli import adapter_cli, admin_actions, billing_cli, budget_cli, usage_report
from maas_cli import chat as chat_loop
from maas_cli import top as top_view
from maas_cli.admin_cli import admin
from maas_cli.client import MaasClient
from maas_cli.connection import Connection
from maas_cli.gateway_options import GatewayOption, KeyOption
from maas_cli.gateway_options import client as _client
from maas_cli.gateway_options import run as _run
from maas_cli.output import (
    EXIT_STATUS_HELP,
    CommandFailed,
    JsonOption,
    bad_usage,
    console,
    errors,
    print_json,
    print_table,
    to_dict,
)
from maas_cli.severity import SEVERITIES, severity_markup
from services.common.usage_terms import GROUPINGS

T = TypeVar("T")

app = typer.Typer(
    help=f"Talk to a MaaS mesh gateway. Every command takes --json. {EXIT_STATUS_HELP}",
    no_args_is_help=True,
)
admin_actions.register(admin)
billing_cli.register(admin, app)
budget_cli.register(admin)
adapter_cli.register(app)
app.add_typer(admin, name="admin")

AnomalyOption = Annotated[
    str,
    typer.Option("--target", envvar="MAAS_ANOMALY", help="host:port of the anomaly service"),
]


async def _default_model(client: MaasClient) -> str:
    models = await client.list_models()
    if not models:
        raise CommandFailed(grpc.StatusCode.UNAVAILABLE, "the mesh serves no model right now")
    return models[0].name


@app.command()
def generate(
    prompt: str,
    gateway: GatewayOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
    model: Annotated[
        str | None, typer.Option(help="model name (default: the first served)")
    ] = None,
    # A short answer for a quick try, with some variety, as chat UIs default to.
    max_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.8,
    seed: int | None = None,
    chat: Annotated[bool, typer.Option(help="send the prompt as a user chat turn")] = True,
    as_json: JsonOption = False,
) -> None:
    """Streams a completion to stdout as it is generated.

    With --json: the whole answer, its finish reason and usage, once it is done."""

    async def main() -> None:
        async with _client(gateway, api_key) as client:
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
            text: list[str] = []
            finish = 0
            async for chunk in stream:
                if as_json:
                    text.append(chunk.text)
                else:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
                usage = chunk.usage
                finish = chunk.finish_reason
            if as_json:
                print_json(
                    {
                        "model": name,
                        "text": "".join(text),
                        "finish_reason": generation_pb2.FinishReason.Name(finish)
                        .removeprefix("FINISH_REASON_")
                        .lower(),
                        "usage": to_dict(usage) if usage is not None else {},
                    }
                )
                return
            sys.stdout.write("\n")
            if usage is not None:
                errors.print(
                    f"[dim]{usage.prompt_tokens} prompt + {usage.completion_tokens} "
                    "completion tokens[/dim]"
                )

    _run(main())


@app.command()
def chat(
    gateway: GatewayOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
    model: Annotated[
        str | None, typer.Option(help="model name (default: the first served)")
    ] = None,
    system: Annotated[
        str | None, typer.Option(help="a system prompt that opens the conversation")
    ] = None,
    # A chat answer of a few sentences; raise it for longer ones.
    max_tokens: Annotated[int, typer.Option(min=1, help="most tokens per answer")] = 256,
    temperature: Annotated[float | None, typer.Option(min=0.0)] = None,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="a string that ends an answer (repeat)")
    ] = None,
    seed: int | None = None,
    as_json: JsonOption = False,
) -> None:
    """Chats with a model: type a line, the answer streams back.

    The model sees the whole conversation so far. /exit or end of input (Ctrl-D)
    ends it. Piped lines work too; with --json, one document of every turn at the end."""
    sampling = chat_loop.Sampling(max_tokens, temperature, top_p, tuple(stop or ()), seed)
    conversation = chat_loop.Conversation(model or "", system=system)

    async def main() -> None:
        async with _client(gateway, api_key) as client:
            conversation.model = conversation.model or await _default_model(client)
            await chat_loop.converse(
                client,
                conversation,
                sampling,
                stdin=sys.stdin,
                stream_to=None if as_json else sys.stdout,
            )

    # Ctrl-C ends a conversation as /exit does; the turns so far still print with --json.
    with contextlib.suppress(KeyboardInterrupt):
        _run(main())
    if as_json:
        print_json(conversation.as_json())


@app.command()
def models(
    gateway: GatewayOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lists the models the mesh serves."""

    async def main() -> list[generation_pb2.ModelInfo]:
        async with _client(gateway, api_key) as client:
            return await client.list_models()

    served = _run(main())
    if as_json:
        print_json({"models": [to_dict(info) for info in served]})
        return
    table = Table("model", "context length")
    table.columns[0].no_wrap = True
    for info in served:
        table.add_row(info.name, str(info.max_context_length))
    print_table(table)


@app.command()
def usage(
    gateway: GatewayOption = "127.0.0.1:50051",
    api_key: KeyOption = None,
    tenant: Annotated[
        str | None, typer.Option(help="any tenant's usage, read from auth (operators)")
    ] = None,
    auth: Annotated[str, typer.Option(envvar="MAAS_AUTH")] = "127.0.0.1:50052",
    since: Annotated[
        datetime | None, typer.Option(help="start of the range (UTC), e.g. 2026-11-01")
    ] = None,
    by: Annotated[str | None, typer.Option(help="model, hour, day or month")] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="table, csv or json (JSON lines, one per row)")
    ] = "table",
    as_json: JsonOption = False,
) -> None:
    """Shows token usage: your own (API key), or a tenant's (--tenant).

    --json prints the whole GetUsage reply as one document."""
    if by is not None and by not in GROUPINGS:
        bad_usage(f"--by must be one of {', '.join(GROUPINGS)}")
    if fmt not in ("table", "csv", "json"):
        bad_usage("--format must be table, csv or json")
    grouping = GROUPINGS[by] if by else usage_pb2.USAGE_GROUPING_UNSPECIFIED
    start = None
    if since is not None:
        start = timestamp_pb2.Timestamp()
        start.FromDatetime(since.replace(tzinfo=since.tzinfo or UTC))

    async def main() -> usage_pb2.GetUsageResponse:
        if tenant:
            connection = Connection.from_env()
            async with connection.channel(auth) as channel:
                query = metering_pb2.MeteringGetUsageRequest(
                    tenant_id=tenant, group_by=grouping, start_time=start
                )
                return await metering_pb2_grpc.MeteringStub(channel).GetUsage(
                    query, metadata=connection.service_metadata()
                )
        async with _client(gateway, api_key) as client:
            return await client.usage_report(grouping, start)

    reply = _run(main())
    if as_json:
        print_json(to_dict(reply))
        return
    typer.echo(usage_report.render(reply, fmt))  # type: ignore[arg-type]


def _alert_row(alert: anomaly_pb2.Alert) -> list[str]:
    return [
        alert.last_seen.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S"),
        severity_markup(alert.severity),
        alert.kind,
        alert.series,
        f"{alert.observed:.4g}",
        f"{alert.expected:.4g}",
        str(alert.count),
        alert.detail,
    ]


def _alert_table(alerts: Sequence[anomaly_pb2.Alert]) -> Table:
    table = Table(
        "last seen (UTC)", "severity", "kind", "series", "observed", "expected", "count", "detail"
    )
    for alert in alerts:
        table.add_row(*_alert_row(alert))
    return table


@app.command()
def alerts(
    target: AnomalyOption = "127.0.0.1:50055",
    tenant: Annotated[str, typer.Option(help="only this tenant's alerts")] = "",
    kind: Annotated[str, typer.Option(help="only this kind, e.g. request_rate_spike")] = "",
    min_severity: Annotated[str, typer.Option(help="info, warning or critical")] = "info",
    since: Annotated[
        datetime | None, typer.Option(help="only alerts last seen since (UTC), e.g. 2026-11-01")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=0, help="at most this many (with --watch: stop after this many)")
    ] = 0,
    watch: Annotated[
        bool, typer.Option(help="stream alerts as they are raised or updated (after --since)")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Shows the anomaly service's alerts, most recently seen first, or follows them.

    With --watch, --json prints one JSON object per line, one per alert."""
    if min_severity not in SEVERITIES:
        bad_usage(f"--min-severity must be one of {', '.join(SEVERITIES)}")
    start = None
    if since is not None:
        start = timestamp_pb2.Timestamp()
        start.FromDatetime(since.replace(tzinfo=since.tzinfo or UTC))

    connection = Connection.from_env()

    async def show() -> None:
        async with connection.channel(target) as channel:
            reply = await anomaly_pb2_grpc.AnomalyStub(channel).ListAlerts(
                anomaly_pb2.ListAlertsRequest(
                    tenant_id=tenant,
                    kind=kind,
                    since=start,
                    min_severity=SEVERITIES[min_severity],
                    limit=limit,
                ),
                metadata=connection.service_metadata(),
            )
        if as_json:
            print_json(to_dict(reply))
        else:
            print_table(_alert_table(reply.alerts))

    async def follow() -> None:
        request = anomaly_pb2.WatchAlertsRequest(
            tenant_id=tenant, kind=kind, min_severity=SEVERITIES[min_severity], since=start
        )
        seen = 0
        async with connection.channel(target) as channel:
            stub = anomaly_pb2_grpc.AnomalyStub(channel)
            async for alert in stub.WatchAlerts(request, metadata=connection.service_metadata()):
                if as_json:
                    typer.echo(json.dumps(to_dict(alert)))
                else:
                    console.print(" ".join(_alert_row(alert)), highlight=False, soft_wrap=True)
                seen += 1
                if seen == limit:
                    return

    # Ctrl-C is how a watch ends.
    with contextlib.suppress(KeyboardInterrupt):
        _run(follow() if watch else show())


@app.command()
def top(
    router: Annotated[
        str, typer.Option(envvar="MAAS_ROUTER", help="host:port of the router")
    ] = "127.0.0.1:50053",
    anomaly: Annotated[
        str, typer.Option(envvar="MAAS_ANOMALY", help="host:port of the anomaly service")
    ] = "127.0.0.1:50055",
    interval: Annotated[
        float,
        typer.Option(min=0.1, help="seconds between frames (--once: between its two samples)"),
    ] = 1.0,
    # Two minutes: an alert is updated while its anomaly lasts, so one unseen that long is over.
    alerts_window: Annotated[
        float,
        typer.Option(min=0.0, help="alerts last seen this many seconds ago or later count as open"),
    ] = 120.0,
    once: Annotated[bool, typer.Option(help="print one frame and exit")] = False,
    as_json: JsonOption = False,
) -> None:
    """A live view of replicas, queues per tenant, tokens/s and open alerts.

    --json prints one snapshot of the rpcs it reads and exits."""
    if as_json:
        snapshot = _run(
            top_view.snapshot_once(router, anomaly, alerts_window=timedelta(seconds=alerts_window))
        )
        print_json(top_view.snapshot_json(snapshot))
        return
    # Ctrl-C is how the live view ends.
    with contextlib.suppress(KeyboardInterrupt):
        _run(
            top_view.run_top(
                router,
                anomaly,
                console=console,
                interval_s=interval,
                alerts_window=timedelta(seconds=alerts_window),
                once=once,
            )
        )


def main() -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    app()


if __name__ == "__main__":
    main()
