from maas.v1 import auth_pb2 as _auth_pb2
from maas.v1 import embedding_pb2 as _embedding_pb2
from maas.v1 import generation_pb2 as _generation_pb2
from maas.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_STATE_UNSPECIFIED: _ClassVar[ReplicaState]
    REPLICA_STATE_SERVING: _ClassVar[ReplicaState]
    REPLICA_STATE_NOT_SERVING: _ClassVar[ReplicaState]
    REPLICA_STATE_DRAINING: _ClassVar[ReplicaState]
    REPLICA_STATE_EJECTED: _ClassVar[ReplicaState]
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_STATE_SERVING: ReplicaState
REPLICA_STATE_NOT_SERVING: ReplicaState
REPLICA_STATE_DRAINING: ReplicaState
REPLICA_STATE_EJECTED: ReplicaState

class EjectReplicaRequest(_message.Message):
    __slots__ = ("address", "duration_s", "reason")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    address: str
    duration_s: float
    reason: str
    def __init__(self, address: _Optional[str] = ..., duration_s: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class RestoreReplicaRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class RequestContext(_message.Message):
    __slots__ = ("tenant_id", "priority", "estimated_tokens", "weight")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    priority: _auth_pb2.Priority
    estimated_tokens: int
    weight: float
    def __init__(self, tenant_id: _Optional[str] = ..., priority: _Optional[_Union[_auth_pb2.Priority, str]] = ..., estimated_tokens: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class RouterGenerateRequest(_message.Message):
    __slots__ = ("request", "context", "adapter_id", "min_message_interval_s")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_MESSAGE_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    request: _generation_pb2.GenerateRequest
    context: RequestContext
    adapter_id: str
    min_message_interval_s: float
    def __init__(self, request: _Optional[_Union[_generation_pb2.GenerateRequest, _Mapping]] = ..., context: _Optional[_Union[RequestContext, _Mapping]] = ..., adapter_id: _Optional[str] = ..., min_message_interval_s: _Optional[float] = ...) -> None: ...

class RouteUpdate(_message.Message):
    __slots__ = ("request", "first_chunk", "ended")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    FIRST_CHUNK_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    request: RouterGenerateRequest
    first_chunk: RouteFirstChunk
    ended: RouteEnded
    def __init__(self, request: _Optional[_Union[RouterGenerateRequest, _Mapping]] = ..., first_chunk: _Optional[_Union[RouteFirstChunk, _Mapping]] = ..., ended: _Optional[_Union[RouteEnded, _Mapping]] = ...) -> None: ...

class RouteFirstChunk(_message.Message):
    __slots__ = ("first_token_s", "queued_s")
    FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    QUEUED_S_FIELD_NUMBER: _ClassVar[int]
    first_token_s: float
    queued_s: float
    def __init__(self, first_token_s: _Optional[float] = ..., queued_s: _Optional[float] = ...) -> None: ...

class RouteEnded(_message.Message):
    __slots__ = ("code", "caller_gone", "finished", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CALLER_GONE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    caller_gone: bool
    finished: bool
    reason: str
    def __init__(self, code: _Optional[int] = ..., caller_gone: _Optional[bool] = ..., finished: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class RouteDecision(_message.Message):
    __slots__ = ("replica_address", "engine_priority", "attempt")
    REPLICA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    replica_address: str
    engine_priority: int
    attempt: int
    def __init__(self, replica_address: _Optional[str] = ..., engine_priority: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("address", "model", "state", "adapters", "in_flight", "concurrency_limit", "load", "ejected_for_s", "ttft_s", "probing", "consecutive_failures", "loaded_adapters", "adapter_slots")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FOR_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    PROBING_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    LOADED_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SLOTS_FIELD_NUMBER: _ClassVar[int]
    address: str
    model: _generation_pb2.ModelInfo
    state: ReplicaState
    adapters: _containers.RepeatedScalarFieldContainer[str]
    in_flight: int
    concurrency_limit: int
    load: _inference_pb2.Load
    ejected_for_s: float
    ttft_s: float
    probing: bool
    consecutive_failures: int
    loaded_adapters: _containers.RepeatedScalarFieldContainer[str]
    adapter_slots: int
    def __init__(self, address: _Optional[str] = ..., model: _Optional[_Union[_generation_pb2.ModelInfo, _Mapping]] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., adapters: _Optional[_Iterable[str]] = ..., in_flight: _Optional[int] = ..., concurrency_limit: _Optional[int] = ..., load: _Optional[_Union[_inference_pb2.Load, _Mapping]] = ..., ejected_for_s: _Optional[float] = ..., ttft_s: _Optional[float] = ..., probing: _Optional[bool] = ..., consecutive_failures: _Optional[int] = ..., loaded_adapters: _Optional[_Iterable[str]] = ..., adapter_slots: _Optional[int] = ...) -> None: ...

class RegisterReplicaRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class DeregisterReplicaRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class DeregisterReplicaResponse(_message.Message):
    __slots__ = ("draining_streams",)
    DRAINING_STREAMS_FIELD_NUMBER: _ClassVar[int]
    draining_streams: int
    def __init__(self, draining_streams: _Optional[int] = ...) -> None: ...

class DrainReplicaRequest(_message.Message):
    __slots__ = ("address", "undrain")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    address: str
    undrain: bool
    def __init__(self, address: _Optional[str] = ..., undrain: _Optional[bool] = ...) -> None: ...

class GetQueueStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueueDepth(_message.Message):
    __slots__ = ("tenant_id", "priority", "waiting", "tokens")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    priority: _auth_pb2.Priority
    waiting: int
    tokens: int
    def __init__(self, tenant_id: _Optional[str] = ..., priority: _Optional[_Union[_auth_pb2.Priority, str]] = ..., waiting: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("waiting", "depths", "shed")
    class ShedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WAITING_FIELD_NUMBER: _ClassVar[int]
    DEPTHS_FIELD_NUMBER: _ClassVar[int]
    SHED_FIELD_NUMBER: _ClassVar[int]
    waiting: int
    depths: _containers.RepeatedCompositeFieldContainer[QueueDepth]
    shed: _containers.ScalarMap[str, int]
    def __init__(self, waiting: _Optional[int] = ..., depths: _Optional[_Iterable[_Union[QueueDepth, _Mapping]]] = ..., shed: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ListReplicasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListReplicasResponse(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    def __init__(self, replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ...) -> None: ...
