"""`GET /v1/usage`: the caller's own usage over `GatewayCore.get_usage`
(the same key scope, `usage:read`, and the same ledger as the gRPC GetUsage
and `maas usage`), with its cost beside the tokens, grouped the same ways.

Query parameters, each optional: `start_time` and `end_time` (Unix seconds,
as OpenAI's usage API takes them, or RFC 3339 with an offset), and
`group_by` (model, hour, day or month). Costs are exact: `cost.value` is a
decimal string of the currency, `cost.micros` the integer micro-units it
came from, never a float."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi import Query, Request
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.core import GatewayCore
from maas.v1 import gateway_pb2, usage_pb2
from services.common.errors import InvalidArgumentError
from services.common.usage_terms import GROUPINGS, money

# The protobuf Timestamp's own range: 0001-01-01 to 9999-12-31, in Unix seconds.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799
# Longer than any RFC 3339 time with nanoseconds and an offset; read no further.
MAX_TIME_CHARS = 40


def parse_time(param: str, text: str) -> Timestamp:
    """Unix seconds or RFC 3339 with an offset, as a Timestamp; else 400 naming `param`."""
    if len(text) > MAX_TIME_CHARS:
        raise InvalidArgumentError(param, f"over {MAX_TIME_CHARS} characters")
    stamp = Timestamp()
    if text.lstrip("-").isdigit():
        seconds = int(text)
        if not MIN_SECONDS <= seconds <= MAX_SECONDS:
            raise InvalidArgumentError(param, "outside years 1 to 9999")
        stamp.FromSeconds(seconds)
        return stamp
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError(
            param, "not Unix seconds nor an RFC 3339 time (2026-12-01T00:00:00Z)"
        ) from None
    if when.tzinfo is None:
        raise InvalidArgumentError(param, "an RFC 3339 time needs its offset (Z or +hh:mm)")
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp


def usage_request(
    start_time: str | None, end_time: str | None, group_by: str | None
) -> gateway_pb2.GetUsageRequest:
    request = gateway_pb2.GetUsageRequest()
    if start_time is not None:
        request.start_time.CopyFrom(parse_time("start_time", start_time))
    if end_time is not None:
        request.end_time.CopyFrom(parse_time("end_time", end_time))
    if (
        start_time is not None
        and end_time is not None
        and request.end_time.ToNanoseconds() < request.start_time.ToNanoseconds()
    ):
        raise InvalidArgumentError("end_time", "before start_time")
    if group_by is not None:
        if group_by not in GROUPINGS:
            raise InvalidArgumentError("group_by", f"one of {', '.join(GROUPINGS)}")
        request.group_by = GROUPINGS[group_by]
    return request


def cost(micros: int, currency: str) -> dict[str, Any]:
    return {"value": money(micros), "micros": micros, "currency": currency}


def _tokens(usage: usage_pb2.UsageSummary | usage_pb2.UsageBucket, currency: str) -> dict[str, Any]:
    return {
        "requests": usage.requests,
        "prompt_tokens": usage.prompt_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost": cost(usage.cost_micros, currency),
    }


def usage_body(
    reply: usage_pb2.GetUsageResponse, request: gateway_pb2.GetUsageRequest, group_by: str | None
) -> dict[str, Any]:
    summary = reply.summary
    return {
        "object": "usage",
        "tenant_id": summary.tenant_id,
        "start_time": request.start_time.seconds if request.HasField("start_time") else None,
        "end_time": request.end_time.seconds if request.HasField("end_time") else None,
        "group_by": group_by,
        **_tokens(summary, summary.currency),
        # Usage with no price in force is billed 0: named, never silently free.
        "unpriced_models": list(summary.unpriced_models),
        "data": [
            {
                "object": "usage.bucket",
                "key": bucket.key,
                **_tokens(bucket, summary.currency),
                "unpriced": bucket.unpriced,
            }
            for bucket in reply.buckets
        ],
    }


def usage_route(
    core: GatewayCore, caller_of: Callable[[Request], Any]
) -> Callable[..., Coroutine[Any, Any, dict[str, Any]]]:
    async def usage(
        request: Request,
        start_time: str | None = Query(
            None, max_length=MAX_TIME_CHARS, description="inclusive; Unix seconds or RFC 3339"
        ),
        end_time: str | None = Query(
            None, max_length=MAX_TIME_CHARS, description="exclusive; Unix seconds or RFC 3339"
        ),
        group_by: str | None = Query(
            None, pattern=f"^({'|'.join(GROUPINGS)})$", description="split the totals this way"
        ),
    ) -> dict[str, Any]:
        query = usage_request(start_time, end_time, group_by)
        reply = await core.get_usage(caller_of(request), query)
        return usage_body(reply, query, group_by)

    return usage
