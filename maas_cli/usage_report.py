"""Renders usage (a summary and its buckets) as a table, CSV or JSON lines."""

from __future__ import annotations

import csv
import io
import json
from typing import Literal

from rich.console import Console
from rich.table import Table

from maas.v1 import usage_pb2

Format = Literal["table", "csv", "json"]
GROUPINGS = {
    "model": usage_pb2.USAGE_GROUPING_MODEL,
    "hour": usage_pb2.USAGE_GROUPING_HOUR,
    "day": usage_pb2.USAGE_GROUPING_DAY,
    "month": usage_pb2.USAGE_GROUPING_MONTH,
}
COLUMNS = ("tenant", "key", "requests", "prompt_tokens", "completion_tokens")


def rows(reply: usage_pb2.GetUsageResponse) -> list[dict[str, str | int]]:
    """One row per bucket, or one for the whole range when not grouped."""
    tenant = reply.summary.tenant_id
    if reply.buckets:
        items = [(b.key, b.requests, b.prompt_tokens, b.completion_tokens) for b in reply.buckets]
    else:
        s = reply.summary
        items = [("total", s.requests, s.prompt_tokens, s.completion_tokens)]
    return [dict(zip(COLUMNS, (tenant, *item), strict=True)) for item in items]


def render(reply: usage_pb2.GetUsageResponse, fmt: Format) -> str:
    table_rows = rows(reply)
    if fmt == "json":
        return "\n".join(json.dumps(row) for row in table_rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table_rows)
        return out.getvalue().rstrip("\n")
    table = Table(*COLUMNS)
    for row in table_rows:
        table.add_row(*(str(row[c]) for c in COLUMNS))
    buffer = io.StringIO()
    # A fixed width, not the terminal's: the table reads the same in a pipe or a
    # file, and 120 columns hold every column unwrapped.
    Console(file=buffer, width=120).print(table)
    return buffer.getvalue().rstrip("\n")
