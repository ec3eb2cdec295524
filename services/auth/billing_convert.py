"""Protobuf <-> billing domain objects."""

from __future__ import annotations

from datetime import UTC, datetime

from maas.v1 import billing_pb2, usage_pb2
from services.auth.billing import BudgetStatus, CostedBucket, CostedUsage, Statement, StatementLine
from services.auth.budgets import Budget
from services.auth.convert import from_timestamp, timestamp
from services.auth.pricing import NewPrice, Price, TokenKind

_KIND_TO_PROTO = {
    TokenKind.PROMPT: billing_pb2.TOKEN_KIND_PROMPT,
    TokenKind.CACHED_PROMPT: billing_pb2.TOKEN_KIND_CACHED_PROMPT,
    TokenKind.COMPLETION: billing_pb2.TOKEN_KIND_COMPLETION,
}


def new_price_from_proto(message: billing_pb2.Price) -> NewPrice:
    return NewPrice(
        model=message.model,
        adapter=message.adapter,
        currency=message.currency,
        prompt=message.prompt_micros_per_million,
        cached_prompt=message.cached_prompt_micros_per_million,
        completion=message.completion_micros_per_million,
        effective_from=(
            from_timestamp(message.effective_time) if message.HasField("effective_time") else None
        ),
    )


def price_to_proto(price: Price) -> billing_pb2.Price:
    return billing_pb2.Price(
        model=price.model,
        adapter=price.adapter,
        currency=price.currency,
        prompt_micros_per_million=price.prompt,
        cached_prompt_micros_per_million=price.cached_prompt,
        completion_micros_per_million=price.completion,
        effective_time=timestamp(price.effective_from),
        create_time=timestamp(price.created_at),
    )


def bucket_to_proto(bucket: CostedBucket) -> usage_pb2.UsageBucket:
    return usage_pb2.UsageBucket(
        key=bucket.key,
        requests=bucket.requests,
        prompt_tokens=bucket.prompt_tokens,
        completion_tokens=bucket.completion_tokens,
        cached_prompt_tokens=bucket.cached_tokens,
        cost_micros=bucket.cost_micros,
        unpriced=bucket.unpriced,
    )


def usage_to_proto(usage: CostedUsage) -> usage_pb2.GetUsageResponse:
    total = usage.total
    return usage_pb2.GetUsageResponse(
        summary=usage_pb2.UsageSummary(
            tenant_id=usage.tenant_id,
            requests=total.requests,
            prompt_tokens=total.prompt_tokens,
            completion_tokens=total.completion_tokens,
            cached_prompt_tokens=total.cached_tokens,
            cost_micros=total.cost_micros,
            currency=usage.currency,
            unpriced_models=usage.unpriced_models,
        ),
        buckets=[bucket_to_proto(b) for b in usage.buckets],
    )


def line_to_proto(line: StatementLine) -> billing_pb2.StatementLine:
    message = billing_pb2.StatementLine(
        model=line.model,
        kind=_KIND_TO_PROTO[line.kind],
        tokens=line.tokens,
        unit_price_micros_per_million=line.unit_price,
        amount_micros=line.amount_micros,
        unpriced=line.priced_at is None,
    )
    if line.priced_at is not None:
        message.price_effective_time.CopyFrom(timestamp(line.priced_at))
    return message


def statement_to_proto(statement: Statement) -> billing_pb2.Statement:
    return billing_pb2.Statement(
        tenant_id=statement.tenant_id,
        month=statement.month,
        currency=statement.currency,
        lines=[line_to_proto(line) for line in statement.lines],
        requests=statement.requests,
        total_micros=statement.total_micros,
        unpriced_models=statement.unpriced_models,
    )


def budget_from_proto(message: billing_pb2.Budget) -> Budget:
    return Budget(
        tenant_id=message.tenant_id,
        key_id=message.key_id,
        monthly_limit=message.monthly_limit_micros,
        total_limit=message.total_limit_micros,
        soft_percent=message.soft_threshold_percent,
        updated_at=datetime.min.replace(tzinfo=UTC),  # stamped when set
    )


def budget_to_proto(budget: Budget, status: BudgetStatus | None = None) -> billing_pb2.Budget:
    message = billing_pb2.Budget(
        tenant_id=budget.tenant_id,
        key_id=budget.key_id,
        monthly_limit_micros=budget.monthly_limit,
        total_limit_micros=budget.total_limit,
        soft_threshold_percent=budget.soft_percent,
        update_time=timestamp(budget.updated_at),
    )
    if status is not None:
        message.month_spent_micros = status.month_spent
        message.total_spent_micros = status.total_spent
    return message
