"""Renders a monthly statement as a table, CSV or JSON, and usage records as
CloudEvents 1.0 (structured JSON, one event a line): what metering systems
such as OpenMeter ingest, each event idempotent on its id (the request id).

Amounts are integer micro-units on the wire; shown here both as micro-units
(exact, for machines) and as a decimal number of the currency (`Decimal`,
never a float)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import UTC
from typing import Any, Literal

from google.protobuf import timestamp_pb2
from rich.console import Console
from rich.table import Table

from maas.v1 import billing_pb2, metering_pb2
from services.common.usage_terms import money

Format = Literal["table", "csv", "json", "cloudevents"]
FORMATS = ("table", "csv", "json", "cloudevents")
CLOUDEVENT_TYPE = "io.maas.usage"
CLOUDEVENT_SOURCE = "maas/metering"
KINDS = {
    billing_pb2.TOKEN_KIND_PROMPT: "prompt",
    billing_pb2.TOKEN_KIND_CACHED_PROMPT: "cached_prompt",
    billing_pb2.TOKEN_KIND_COMPLETION: "completion",
}
STATUSES = {
    metering_pb2.REQUEST_STATUS_COMPLETED: "completed",
    metering_pb2.REQUEST_STATUS_CANCELLED: "cancelled",
    metering_pb2.REQUEST_STATUS_FAILED: "failed",
    metering_pb2.REQUEST_STATUS_RUNNING: "running",
}
COLUMNS = (
    "model",
    "kind",
    "tokens",
    "unit_price_per_million",
    "amount",
    "amount_micros",
    "currency",
    "price_effective_time",
)


def rfc3339(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _line(statement: billing_pb2.Statement, line: billing_pb2.StatementLine) -> dict[str, Any]:
    return {
        "model": line.model,
        "kind": KINDS[line.kind],
        "tokens": line.tokens,
        "unit_price_per_million": money(line.unit_price_micros_per_million),
        "amount": money(line.amount_micros),
        "amount_micros": line.amount_micros,
        "currency": statement.currency,
        "price_effective_time": (
            rfc3339(line.price_effective_time) if not line.unpriced else "unpriced"
        ),
    }


def as_dict(statement: billing_pb2.Statement) -> dict[str, Any]:
    return {
        "tenant_id": statement.tenant_id,
        "month": statement.month,
        "currency": statement.currency,
        "requests": statement.requests,
        "lines": [_line(statement, line) for line in statement.lines],
        "total": money(statement.total_micros),
        "total_micros": statement.total_micros,
        "unpriced_models": list(statement.unpriced_models),
    }


def render(statement: billing_pb2.Statement, fmt: Format) -> str:
    lines = [_line(statement, line) for line in statement.lines]
    if fmt == "json":
        return json.dumps(as_dict(statement), indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)
        writer.writerow(
            {"model": "total", "amount": money(statement.total_micros),
             "amount_micros": statement.total_micros, "currency": statement.currency}
        )  # fmt: skip
        return out.getvalue().rstrip("\n")
    table = Table(*COLUMNS, title=f"{statement.tenant_id} {statement.month}")
    for row in lines:
        table.add_row(*(str(row[c]) for c in COLUMNS))
    table.add_row("total", "", "", "", money(statement.total_micros),
                  str(statement.total_micros), statement.currency, "")  # fmt: skip
    buffer = io.StringIO()
    # A fixed width, not the terminal's: the same in a pipe, and wide enough
    # that no id or amount is ever cut.
    Console(file=buffer, width=160).print(table)
    if statement.unpriced_models:
        buffer.write(f"unpriced (billed 0): {', '.join(statement.unpriced_models)}\n")
    return buffer.getvalue().rstrip("\n")


def cloudevent(record: metering_pb2.UsageRecord) -> dict[str, Any]:
    """One usage record as a CloudEvent 1.0; its id is the request id, so a
    metering system that sees it twice counts it once."""
    return {
        "specversion": "1.0",
        "id": record.request_id,
        "source": CLOUDEVENT_SOURCE,
        "type": CLOUDEVENT_TYPE,
        "subject": record.tenant_id,
        "time": rfc3339(record.end_time),
        "datacontenttype": "application/json",
        "data": {
            "model": record.model,
            "key_id": record.key_id,
            "status": STATUSES.get(record.status, "unspecified"),
            "prompt_tokens": record.prompt_tokens,
            "cached_prompt_tokens": record.cached_tokens,
            "completion_tokens": record.completion_tokens,
        },
    }


def cloudevents(records: Iterable[metering_pb2.UsageRecord]) -> str:
    return "\n".join(json.dumps(cloudevent(r), sort_keys=True) for r in records)
