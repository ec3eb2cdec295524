import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RestrictionAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESTRICTION_ACTION_UNSPECIFIED: _ClassVar[RestrictionAction]
    RESTRICTION_ACTION_SUSPEND: _ClassVar[RestrictionAction]
    RESTRICTION_ACTION_THROTTLE: _ClassVar[RestrictionAction]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_INTERACTIVE: _ClassVar[Priority]
    PRIORITY_DEFAULT: _ClassVar[Priority]
    PRIORITY_BATCH: _ClassVar[Priority]
RESTRICTION_ACTION_UNSPECIFIED: RestrictionAction
RESTRICTION_ACTION_SUSPEND: RestrictionAction
RESTRICTION_ACTION_THROTTLE: RestrictionAction
PRIORITY_UNSPECIFIED: Priority
PRIORITY_INTERACTIVE: Priority
PRIORITY_DEFAULT: Priority
PRIORITY_BATCH: Priority

class RestrictRequest(_message.Message):
    __slots__ = ("tenant_id", "key_id", "action", "requests_per_minute", "duration", "reason", "actor", "alert_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key_id: str
    action: RestrictionAction
    requests_per_minute: int
    duration: _duration_pb2.Duration
    reason: str
    actor: str
    alert_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., key_id: _Optional[str] = ..., action: _Optional[_Union[RestrictionAction, str]] = ..., requests_per_minute: _Optional[int] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., alert_id: _Optional[str] = ...) -> None: ...

class Restriction(_message.Message):
    __slots__ = ("restriction_id", "tenant_id", "key_id", "action", "requests_per_minute", "create_time", "expire_time", "lift_time", "reason", "actor", "alert_id", "lifted_by", "active")
    RESTRICTION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LIFT_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    LIFTED_BY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    restriction_id: str
    tenant_id: str
    key_id: str
    action: RestrictionAction
    requests_per_minute: int
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    lift_time: _timestamp_pb2.Timestamp
    reason: str
    actor: str
    alert_id: str
    lifted_by: str
    active: bool
    def __init__(self, restriction_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., key_id: _Optional[str] = ..., action: _Optional[_Union[RestrictionAction, str]] = ..., requests_per_minute: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lift_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., alert_id: _Optional[str] = ..., lifted_by: _Optional[str] = ..., active: _Optional[bool] = ...) -> None: ...

class LiftRestrictionRequest(_message.Message):
    __slots__ = ("restriction_id", "actor", "reason")
    RESTRICTION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    restriction_id: str
    actor: str
    reason: str
    def __init__(self, restriction_id: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListRestrictionsRequest(_message.Message):
    __slots__ = ("tenant_id", "include_inactive")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    include_inactive: bool
    def __init__(self, tenant_id: _Optional[str] = ..., include_inactive: _Optional[bool] = ...) -> None: ...

class ListRestrictionsResponse(_message.Message):
    __slots__ = ("restrictions",)
    RESTRICTIONS_FIELD_NUMBER: _ClassVar[int]
    restrictions: _containers.RepeatedCompositeFieldContainer[Restriction]
    def __init__(self, restrictions: _Optional[_Iterable[_Union[Restriction, _Mapping]]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("audit_id", "time", "actor", "action", "restriction_id", "tenant_id", "key_id", "detail")
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESTRICTION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    audit_id: str
    time: _timestamp_pb2.Timestamp
    actor: str
    action: str
    restriction_id: str
    tenant_id: str
    key_id: str
    detail: str
    def __init__(self, audit_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., restriction_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., key_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditRecordsRequest(_message.Message):
    __slots__ = ("tenant_id", "limit")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    limit: int
    def __init__(self, tenant_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests", "monthly_token_budget", "allowed_models")
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    requests_per_minute: int
    tokens_per_minute: int
    max_concurrent_requests: int
    monthly_token_budget: int
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., max_concurrent_requests: _Optional[int] = ..., monthly_token_budget: _Optional[int] = ..., allowed_models: _Optional[_Iterable[str]] = ...) -> None: ...

class SetPlanRequest(_message.Message):
    __slots__ = ("tenant_id", "plan", "priority")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    plan: Plan
    priority: Priority
    def __init__(self, tenant_id: _Optional[str] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("tenant_id", "request_id", "model", "estimated_tokens", "key_id", "idempotency_key", "prompt_tokens", "max_completion_tokens")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    request_id: str
    model: str
    estimated_tokens: int
    key_id: str
    idempotency_key: str
    prompt_tokens: int
    max_completion_tokens: int
    def __init__(self, tenant_id: _Optional[str] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ..., estimated_tokens: _Optional[int] = ..., key_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., max_completion_tokens: _Optional[int] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("reservation_id", "tokens", "expire_time", "lease")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    tokens: int
    expire_time: _timestamp_pb2.Timestamp
    lease: _duration_pb2.Duration
    def __init__(self, reservation_id: _Optional[str] = ..., tokens: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("reservation_id",)
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    def __init__(self, reservation_id: _Optional[str] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("reservation_id", "used_tokens", "prompt_tokens", "cached_tokens", "completion_tokens")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    USED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    used_tokens: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    def __init__(self, reservation_id: _Optional[str] = ..., used_tokens: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("returned_tokens", "cost_micros", "crossed")
    RETURNED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    CROSSED_FIELD_NUMBER: _ClassVar[int]
    returned_tokens: int
    cost_micros: int
    crossed: _containers.RepeatedCompositeFieldContainer[BudgetCrossing]
    def __init__(self, returned_tokens: _Optional[int] = ..., cost_micros: _Optional[int] = ..., crossed: _Optional[_Iterable[_Union[BudgetCrossing, _Mapping]]] = ...) -> None: ...

class BudgetCrossing(_message.Message):
    __slots__ = ("budget", "tenant_id", "key_id", "spent_micros", "threshold_micros", "limit_micros")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SPENT_MICROS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_MICROS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    budget: str
    tenant_id: str
    key_id: str
    spent_micros: int
    threshold_micros: int
    limit_micros: int
    def __init__(self, budget: _Optional[str] = ..., tenant_id: _Optional[str] = ..., key_id: _Optional[str] = ..., spent_micros: _Optional[int] = ..., threshold_micros: _Optional[int] = ..., limit_micros: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("reservation_id", "tenant_id", "request_id", "idempotency_key")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    tenant_id: str
    request_id: str
    idempotency_key: str
    def __init__(self, reservation_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., request_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("tenant_id", "name", "priority", "create_time", "plan")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    priority: Priority
    create_time: _timestamp_pb2.Timestamp
    plan: Plan
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., priority: _Optional[_Union[Priority, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("key_id", "tenant_id", "name", "scopes", "create_time", "revoke_time", "expire_time")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    tenant_id: str
    name: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    def __init__(self, api_key: _Optional[str] = ...) -> None: ...

class Principal(_message.Message):
    __slots__ = ("tenant_id", "key_id", "scopes", "priority")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    priority: Priority
    def __init__(self, tenant_id: _Optional[str] = ..., key_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("name", "priority", "plan")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    name: str
    priority: Priority
    plan: Plan
    def __init__(self, name: _Optional[str] = ..., priority: _Optional[_Union[Priority, str]] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "name", "scopes", "expire_time")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("key", "api_key")
    KEY_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    api_key: str
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., api_key: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...
