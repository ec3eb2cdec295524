import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from maas.v1 import metering_pb2 as _metering_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_KIND_UNSPECIFIED: _ClassVar[TokenKind]
    TOKEN_KIND_PROMPT: _ClassVar[TokenKind]
    TOKEN_KIND_CACHED_PROMPT: _ClassVar[TokenKind]
    TOKEN_KIND_COMPLETION: _ClassVar[TokenKind]
TOKEN_KIND_UNSPECIFIED: TokenKind
TOKEN_KIND_PROMPT: TokenKind
TOKEN_KIND_CACHED_PROMPT: TokenKind
TOKEN_KIND_COMPLETION: TokenKind

class Budget(_message.Message):
    __slots__ = ("tenant_id", "key_id", "monthly_limit_micros", "total_limit_micros", "soft_threshold_percent", "update_time", "month_spent_micros", "total_spent_micros")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    SOFT_THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MONTH_SPENT_MICROS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SPENT_MICROS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key_id: str
    monthly_limit_micros: int
    total_limit_micros: int
    soft_threshold_percent: int
    update_time: _timestamp_pb2.Timestamp
    month_spent_micros: int
    total_spent_micros: int
    def __init__(self, tenant_id: _Optional[str] = ..., key_id: _Optional[str] = ..., monthly_limit_micros: _Optional[int] = ..., total_limit_micros: _Optional[int] = ..., soft_threshold_percent: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., month_spent_micros: _Optional[int] = ..., total_spent_micros: _Optional[int] = ...) -> None: ...

class SetBudgetRequest(_message.Message):
    __slots__ = ("budget",)
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    budget: Budget
    def __init__(self, budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class ListBudgetsRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListBudgetsResponse(_message.Message):
    __slots__ = ("budgets",)
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[Budget]
    def __init__(self, budgets: _Optional[_Iterable[_Union[Budget, _Mapping]]] = ...) -> None: ...

class Price(_message.Message):
    __slots__ = ("model", "adapter", "currency", "prompt_micros_per_million", "cached_prompt_micros_per_million", "completion_micros_per_million", "effective_time", "create_time")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_MICROS_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_MICROS_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_MICROS_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    model: str
    adapter: str
    currency: str
    prompt_micros_per_million: int
    cached_prompt_micros_per_million: int
    completion_micros_per_million: int
    effective_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., adapter: _Optional[str] = ..., currency: _Optional[str] = ..., prompt_micros_per_million: _Optional[int] = ..., cached_prompt_micros_per_million: _Optional[int] = ..., completion_micros_per_million: _Optional[int] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetPriceRequest(_message.Message):
    __slots__ = ("price", "backdate")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    BACKDATE_FIELD_NUMBER: _ClassVar[int]
    price: Price
    backdate: bool
    def __init__(self, price: _Optional[_Union[Price, _Mapping]] = ..., backdate: _Optional[bool] = ...) -> None: ...

class ListPricesRequest(_message.Message):
    __slots__ = ("model", "include_history")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    model: str
    include_history: bool
    def __init__(self, model: _Optional[str] = ..., include_history: _Optional[bool] = ...) -> None: ...

class ListPricesResponse(_message.Message):
    __slots__ = ("prices",)
    PRICES_FIELD_NUMBER: _ClassVar[int]
    prices: _containers.RepeatedCompositeFieldContainer[Price]
    def __init__(self, prices: _Optional[_Iterable[_Union[Price, _Mapping]]] = ...) -> None: ...

class GetStatementRequest(_message.Message):
    __slots__ = ("tenant_id", "month")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MONTH_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    month: str
    def __init__(self, tenant_id: _Optional[str] = ..., month: _Optional[str] = ...) -> None: ...

class StatementLine(_message.Message):
    __slots__ = ("model", "kind", "tokens", "unit_price_micros_per_million", "amount_micros", "price_effective_time", "unpriced")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_MICROS_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    PRICE_EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_FIELD_NUMBER: _ClassVar[int]
    model: str
    kind: TokenKind
    tokens: int
    unit_price_micros_per_million: int
    amount_micros: int
    price_effective_time: _timestamp_pb2.Timestamp
    unpriced: bool
    def __init__(self, model: _Optional[str] = ..., kind: _Optional[_Union[TokenKind, str]] = ..., tokens: _Optional[int] = ..., unit_price_micros_per_million: _Optional[int] = ..., amount_micros: _Optional[int] = ..., price_effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unpriced: _Optional[bool] = ...) -> None: ...

class Statement(_message.Message):
    __slots__ = ("tenant_id", "month", "currency", "lines", "requests", "total_micros", "unpriced_models")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MONTH_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MICROS_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_MODELS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    month: str
    currency: str
    lines: _containers.RepeatedCompositeFieldContainer[StatementLine]
    requests: int
    total_micros: int
    unpriced_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., month: _Optional[str] = ..., currency: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[StatementLine, _Mapping]]] = ..., requests: _Optional[int] = ..., total_micros: _Optional[int] = ..., unpriced_models: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportUsageRequest(_message.Message):
    __slots__ = ("tenant_id", "month")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MONTH_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    month: str
    def __init__(self, tenant_id: _Optional[str] = ..., month: _Optional[str] = ...) -> None: ...
