"""Renders usage (a summary and its buckets) as a table, CSV or JSON lines,
with its cost beside the tokens: `cost` in the currency (exact, six places),
`cost_micros` in micro-units, and `unpriced` where some usage had no price
(billed 0, never silently free)."""

from __future__ import annotations

import csv
import io
import json
from typing import Literal

from rich.console import Console
from rich.table import Table

from maas.v1 import usage_pb2
from services.common.usage_terms import money

Format = Literal["table", "csv", "json"]
COLUMNS = (
    "tenant",
    "key",
    "requests",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "cost",
    "cost_micros",
    "currency",
    "unpriced",
)


def rows(reply: usage_pb2.GetUsageResponse) -> list[dict[str, str | int | bool]]:
    """One row per bucket, or one for the whole range when not grouped."""
    s = reply.summary
    if reply.buckets:
        items = [
            (b.key, b.requests, b.prompt_tokens, b.cached_prompt_tokens, b.completion_tokens,
             b.cost_micros, b.unpriced)
            for b in reply.buckets
        ]  # fmt: skip
    else:
        items = [
            ("total", s.requests, s.prompt_tokens, s.cached_prompt_tokens, s.completion_tokens,
             s.cost_micros, bool(s.unpriced_models))
        ]  # fmt: skip
    return [
        dict(
            zip(
                COLUMNS,
                (s.tenant_id, key, n, p, cached, c, money(cost), cost, s.currency, unpriced),
                strict=True,
            )
        )
        for key, n, p, cached, c, cost, unpriced in items
    ]


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
    # file, and 200 columns hold every column (a 32-character tenant id too) unwrapped.
    Console(file=buffer, width=200).print(table)
    if reply.summary.unpriced_models:
        unpriced = ", ".join(reply.summary.unpriced_models)
        buffer.write(f"unpriced (billed 0): {unpriced}\n")
    return buffer.getvalue().rstrip("\n")
