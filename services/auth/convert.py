"""Protobuf <-> auth domain objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from maas.v1 import auth_pb2, metering_pb2, usage_pb2
from services.auth.models import (
    ApiKeyRecord,
    AuditEntry,
    Grouping,
    Plan,
    Principal,
    Priority,
    RequestStatus,
    Restriction,
    RestrictionAction,
    Tenant,
    UsageRecord,
)
from services.auth.restrictions import RestrictRequest
from services.common.errors import InvalidArgumentError

_STATUS_TO_PROTO = {
    RequestStatus.COMPLETED: metering_pb2.REQUEST_STATUS_COMPLETED,
    RequestStatus.CANCELLED: metering_pb2.REQUEST_STATUS_CANCELLED,
    RequestStatus.FAILED: metering_pb2.REQUEST_STATUS_FAILED,
    RequestStatus.RUNNING: metering_pb2.REQUEST_STATUS_RUNNING,
}
_STATUS_FROM_PROTO = {v: k for k, v in _STATUS_TO_PROTO.items()}


def timestamp(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def priority_from_proto(value: int) -> Priority:
    return Priority(value) if value in {p.value for p in Priority} else Priority.DEFAULT


def plan_to_proto(plan: Plan) -> auth_pb2.Plan:
    return auth_pb2.Plan(
        requests_per_minute=plan.requests_per_minute,
        tokens_per_minute=plan.tokens_per_minute,
        max_concurrent_requests=plan.max_concurrent_requests,
        monthly_token_budget=plan.monthly_token_budget,
        allowed_models=plan.allowed_models,
    )


def plan_from_proto(message: auth_pb2.Plan) -> Plan:
    return Plan(
        requests_per_minute=message.requests_per_minute,
        tokens_per_minute=message.tokens_per_minute,
        max_concurrent_requests=message.max_concurrent_requests,
        monthly_token_budget=message.monthly_token_budget,
        allowed_models=tuple(message.allowed_models),
    )


def tenant_to_proto(tenant: Tenant) -> auth_pb2.Tenant:
    return auth_pb2.Tenant(
        tenant_id=tenant.tenant_id,
        name=tenant.name,
        priority=int(tenant.priority),  # type: ignore[arg-type]
        create_time=timestamp(tenant.created_at),
        plan=plan_to_proto(tenant.plan),
    )


def key_to_proto(key: ApiKeyRecord) -> auth_pb2.ApiKey:
    message = auth_pb2.ApiKey(
        key_id=key.key_id,
        tenant_id=key.tenant_id,
        name=key.name,
        scopes=[s.value for s in key.scopes],
        create_time=timestamp(key.created_at),
    )
    if key.revoked_at is not None:
        message.revoke_time.CopyFrom(timestamp(key.revoked_at))
    if key.expires_at is not None:
        message.expire_time.CopyFrom(timestamp(key.expires_at))
    return message


def principal_to_proto(principal: Principal) -> auth_pb2.Principal:
    return auth_pb2.Principal(
        tenant_id=principal.tenant_id,
        key_id=principal.key_id,
        scopes=[s.value for s in principal.scopes],
        priority=int(principal.priority),  # type: ignore[arg-type]
    )


def usage_from_proto(message: metering_pb2.UsageRecord) -> UsageRecord:
    status = _STATUS_FROM_PROTO.get(message.status)
    if status is None:
        raise InvalidArgumentError("record.status", "required")
    if not message.HasField("start_time"):
        raise InvalidArgumentError("record.start_time", "required")
    if not message.HasField("end_time"):
        raise InvalidArgumentError("record.end_time", "required")
    return UsageRecord(
        request_id=message.request_id,
        tenant_id=message.tenant_id,
        key_id=message.key_id,
        model=message.model,
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        start_time=from_timestamp(message.start_time),
        end_time=from_timestamp(message.end_time),
        status=status,
        cached_tokens=message.cached_tokens,
        client_request_id=message.client_request_id,
    )


def usage_to_proto(record: UsageRecord) -> metering_pb2.UsageRecord:
    return metering_pb2.UsageRecord(
        request_id=record.request_id,
        tenant_id=record.tenant_id,
        key_id=record.key_id,
        model=record.model,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        start_time=timestamp(record.start_time),
        end_time=timestamp(record.end_time),
        status=_STATUS_TO_PROTO[record.status],
        cached_tokens=record.cached_tokens,
        client_request_id=record.client_request_id,
    )


_GROUPINGS: dict[int, Grouping] = {
    usage_pb2.USAGE_GROUPING_MODEL: Grouping.MODEL,
    usage_pb2.USAGE_GROUPING_HOUR: Grouping.HOUR,
    usage_pb2.USAGE_GROUPING_DAY: Grouping.DAY,
    usage_pb2.USAGE_GROUPING_MONTH: Grouping.MONTH,
}


def grouping_from_proto(value: int) -> Grouping | None:
    return _GROUPINGS.get(value)


def optional_time(message: Message, field: str) -> datetime | None:
    """The timestamp field as a datetime, None when unset."""
    if not message.HasField(field):
        return None
    return from_timestamp(getattr(message, field))


_ACTION_TO_PROTO = {
    RestrictionAction.SUSPEND: auth_pb2.RESTRICTION_ACTION_SUSPEND,
    RestrictionAction.THROTTLE: auth_pb2.RESTRICTION_ACTION_THROTTLE,
}
_ACTION_FROM_PROTO = {v: k for k, v in _ACTION_TO_PROTO.items()}


def restrict_from_proto(message: auth_pb2.RestrictRequest) -> RestrictRequest:
    action = _ACTION_FROM_PROTO.get(message.action)
    if action is None:
        raise InvalidArgumentError("action", "must be SUSPEND or THROTTLE")
    if not message.HasField("duration"):
        raise InvalidArgumentError("duration", "required")
    return RestrictRequest(
        action=action,
        duration=timedelta(microseconds=message.duration.ToMicroseconds()),
        reason=message.reason,
        actor=message.actor,
        tenant_id=message.tenant_id,
        key_id=message.key_id,
        requests_per_minute=message.requests_per_minute,
        alert_id=message.alert_id,
    )


def restriction_to_proto(restriction: Restriction, active: bool) -> auth_pb2.Restriction:
    message = auth_pb2.Restriction(
        restriction_id=restriction.restriction_id,
        tenant_id=restriction.tenant_id,
        key_id=restriction.key_id,
        action=_ACTION_TO_PROTO[restriction.action],
        requests_per_minute=restriction.requests_per_minute,
        create_time=timestamp(restriction.created_at),
        expire_time=timestamp(restriction.expires_at),
        reason=restriction.reason,
        actor=restriction.actor,
        alert_id=restriction.alert_id,
        lifted_by=restriction.lifted_by,
        active=active,
    )
    if restriction.lifted_at is not None:
        message.lift_time.CopyFrom(timestamp(restriction.lifted_at))
    return message


def audit_to_proto(entry: AuditEntry) -> auth_pb2.AuditRecord:
    return auth_pb2.AuditRecord(
        audit_id=entry.audit_id,
        time=timestamp(entry.at),
        actor=entry.actor,
        action=entry.action,
        restriction_id=entry.restriction_id,
        tenant_id=entry.tenant_id,
        key_id=entry.key_id,
        detail=entry.detail,
    )
