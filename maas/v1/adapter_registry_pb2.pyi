from maas.v1 import adapter_pb2 as _adapter_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegistryAdapterUpload(_message.Message):
    __slots__ = ("tenant_id", "upload")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    upload: _adapter_pb2.AdapterUpload
    def __init__(self, tenant_id: _Optional[str] = ..., upload: _Optional[_Union[_adapter_pb2.AdapterUpload, _Mapping]] = ...) -> None: ...

class RegistryListAdaptersRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ResolveAdapterRequest(_message.Message):
    __slots__ = ("tenant_id", "name")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RegistryDeleteAdapterRequest(_message.Message):
    __slots__ = ("tenant_id", "name")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class FetchAdapterRequest(_message.Message):
    __slots__ = ("adapter_id",)
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    def __init__(self, adapter_id: _Optional[str] = ...) -> None: ...

class AdapterPart(_message.Message):
    __slots__ = ("head", "weights_chunk")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_CHUNK_FIELD_NUMBER: _ClassVar[int]
    head: FetchedAdapterHead
    weights_chunk: bytes
    def __init__(self, head: _Optional[_Union[FetchedAdapterHead, _Mapping]] = ..., weights_chunk: _Optional[bytes] = ...) -> None: ...

class FetchedAdapterHead(_message.Message):
    __slots__ = ("adapter", "config_json")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    adapter: _adapter_pb2.Adapter
    config_json: bytes
    def __init__(self, adapter: _Optional[_Union[_adapter_pb2.Adapter, _Mapping]] = ..., config_json: _Optional[bytes] = ...) -> None: ...
