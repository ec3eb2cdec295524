import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_REQUEST: _ClassVar[EventKind]
    EVENT_KIND_AUTH_FAILURE: _ClassVar[EventKind]
    EVENT_KIND_BUDGET_THRESHOLD: _ClassVar[EventKind]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_WARNING: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_REQUEST: EventKind
EVENT_KIND_AUTH_FAILURE: EventKind
EVENT_KIND_BUDGET_THRESHOLD: EventKind
SEVERITY_UNSPECIFIED: Severity
SEVERITY_INFO: Severity
SEVERITY_WARNING: Severity
SEVERITY_CRITICAL: Severity

class Event(_message.Message):
    __slots__ = ("kind", "time", "request_id", "tenant_id", "key_id", "model", "replica", "prompt_tokens", "completion_tokens", "time_to_first_token_s", "duration_s", "status_code", "source", "budget", "spent_micros", "threshold_micros")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPENT_MICROS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_MICROS_FIELD_NUMBER: _ClassVar[int]
    kind: EventKind
    time: _timestamp_pb2.Timestamp
    request_id: str
    tenant_id: str
    key_id: str
    model: str
    replica: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    duration_s: float
    status_code: str
    source: str
    budget: str
    spent_micros: int
    threshold_micros: int
    def __init__(self, kind: _Optional[_Union[EventKind, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., key_id: _Optional[str] = ..., model: _Optional[str] = ..., replica: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., time_to_first_token_s: _Optional[float] = ..., duration_s: _Optional[float] = ..., status_code: _Optional[str] = ..., source: _Optional[str] = ..., budget: _Optional[str] = ..., spent_micros: _Optional[int] = ..., threshold_micros: _Optional[int] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("accepted", "rejected", "first_rejected_field")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    FIRST_REJECTED_FIELD_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    first_rejected_field: str
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., first_rejected_field: _Optional[str] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("tenant_id", "kind", "since", "min_severity", "limit")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    kind: str
    since: _timestamp_pb2.Timestamp
    min_severity: Severity
    limit: int
    def __init__(self, tenant_id: _Optional[str] = ..., kind: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., min_severity: _Optional[_Union[Severity, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class WatchAlertsRequest(_message.Message):
    __slots__ = ("tenant_id", "kind", "min_severity", "since")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    kind: str
    min_severity: Severity
    since: _timestamp_pb2.Timestamp
    def __init__(self, tenant_id: _Optional[str] = ..., kind: _Optional[str] = ..., min_severity: _Optional[_Union[Severity, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("alert_id", "kind", "series", "first_seen", "last_seen", "severity", "score", "observed", "expected", "count", "tenant_id", "detail", "actions")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    kind: str
    series: str
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    severity: Severity
    score: float
    observed: float
    expected: float
    count: int
    tenant_id: str
    detail: str
    actions: _containers.RepeatedCompositeFieldContainer[PolicyAction]
    def __init__(self, alert_id: _Optional[str] = ..., kind: _Optional[str] = ..., series: _Optional[str] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., severity: _Optional[_Union[Severity, str]] = ..., score: _Optional[float] = ..., observed: _Optional[float] = ..., expected: _Optional[float] = ..., count: _Optional[int] = ..., tenant_id: _Optional[str] = ..., detail: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[PolicyAction, _Mapping]]] = ...) -> None: ...

class PolicyAction(_message.Message):
    __slots__ = ("action", "target", "time", "expire_time", "reference", "error")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    action: str
    target: str
    time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    reference: str
    error: str
    def __init__(self, action: _Optional[str] = ..., target: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reference: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class GetEventStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EventStats(_message.Message):
    __slots__ = ("total", "by_kind", "by_tenant", "completion_tokens_by_tenant", "series_tracked", "series_evicted", "watch_dropped", "by_replica")
    class ByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ByTenantEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class CompletionTokensByTenantEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ByReplicaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BY_KIND_FIELD_NUMBER: _ClassVar[int]
    BY_TENANT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_BY_TENANT_FIELD_NUMBER: _ClassVar[int]
    SERIES_TRACKED_FIELD_NUMBER: _ClassVar[int]
    SERIES_EVICTED_FIELD_NUMBER: _ClassVar[int]
    WATCH_DROPPED_FIELD_NUMBER: _ClassVar[int]
    BY_REPLICA_FIELD_NUMBER: _ClassVar[int]
    total: int
    by_kind: _containers.ScalarMap[str, int]
    by_tenant: _containers.ScalarMap[str, int]
    completion_tokens_by_tenant: _containers.ScalarMap[str, int]
    series_tracked: int
    series_evicted: int
    watch_dropped: int
    by_replica: _containers.ScalarMap[str, int]
    def __init__(self, total: _Optional[int] = ..., by_kind: _Optional[_Mapping[str, int]] = ..., by_tenant: _Optional[_Mapping[str, int]] = ..., completion_tokens_by_tenant: _Optional[_Mapping[str, int]] = ..., series_tracked: _Optional[int] = ..., series_evicted: _Optional[int] = ..., watch_dropped: _Optional[int] = ..., by_replica: _Optional[_Mapping[str, int]] = ...) -> None: ...
