from maas.v1 import auth_pb2 as _auth_pb2
from maas.v1 import generation_pb2 as _generation_pb2
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
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_STATE_SERVING: ReplicaState
REPLICA_STATE_NOT_SERVING: ReplicaState

class RequestContext(_message.Message):
    __slots__ = ("tenant_id", "priority")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    priority: _auth_pb2.Priority
    def __init__(self, tenant_id: _Optional[str] = ..., priority: _Optional[_Union[_auth_pb2.Priority, str]] = ...) -> None: ...

class RouterGenerateRequest(_message.Message):
    __slots__ = ("request", "context")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    request: _generation_pb2.GenerateRequest
    context: RequestContext
    def __init__(self, request: _Optional[_Union[_generation_pb2.GenerateRequest, _Mapping]] = ..., context: _Optional[_Union[RequestContext, _Mapping]] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("address", "model", "state", "adapters")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    address: str
    model: _generation_pb2.ModelInfo
    state: ReplicaState
    adapters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, address: _Optional[str] = ..., model: _Optional[_Union[_generation_pb2.ModelInfo, _Mapping]] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., adapters: _Optional[_Iterable[str]] = ...) -> None: ...

class ListReplicasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListReplicasResponse(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    def __init__(self, replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ...) -> None: ...
