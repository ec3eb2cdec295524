"""Tenants' private LoRA adapters: validated, stored and found by name for
their tenant, and by id for the replicas that load them.

An adapter is its PEFT files: adapter_config.json (the `config_json`) and
adapter_model.safetensors (the weights). Both are checked here without
loading a tensor: the config is a LoRA one with a bounded rank, the weights a
well-formed safetensors file (a bounded JSON header whose tensors lie inside
the file). The weights are bounded as they arrive, so nothing past the bound
is kept. A tenant holds a bounded number of adapters: one more is
FAILED_PRECONDITION (retrying does not help until it deletes one)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import struct
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeGuard

from services.common.adapter_limits import DEFAULT_MAX_WEIGHTS_BYTES, MAX_CONFIG_BYTES
from services.common.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from services.common.generation_limits import MAX_MODEL_NAME_BYTES

if TYPE_CHECKING:  # the store's protocol names Adapter: imported for types only
    from services.auth.store import AuthStore

__all__ = [
    "ADAPTER_ID_PREFIX",
    "CHUNK_BYTES",
    "Adapter",
    "AdapterLimitError",
    "AdapterNameTakenError",
    "AdapterSettings",
    "Adapters",
    "Upload",
    "check_config",
    "check_name",
    "check_safetensors",
]

ADAPTER_ID_PREFIX = "ad-"
# 12 random bytes, 24 hex digits: ids never collide in practice.
_ID_BYTES = 12
# The most bytes of one upload or fetch message: far below gRPC's 4 MiB
# message limit, and few messages for a 64 MiB file.
CHUNK_BYTES = 1024 * 1024
# A safetensors header is ~100 bytes per tensor; 1 MiB holds ~10,000 tensors,
# more than any LoRA of a served model has.
MAX_HEADER_BYTES = 1024 * 1024
# safetensors' fixed prefix: the header's length, a little-endian u64.
_LENGTH_BYTES = 8
# Module names are short identifiers ("q_proj", "self_attn.o_proj").
MAX_TARGET_MODULE_CHARS = 128
# Every linear layer of a transformer block is well under this many names.
MAX_TARGET_MODULES = 64

# Bytes per element of each safetensors dtype: a tensor's data_offsets must
# span exactly its shape's elements.
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_NAME_RULE = "1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"


class AdapterNameTakenError(Exception):
    """The store has an adapter of that tenant by that name."""


class AdapterLimitError(Exception):
    """The tenant holds as many adapters as it may."""


@dataclass(frozen=True, slots=True)
class AdapterSettings:
    max_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES
    max_rank: int = 64
    max_per_tenant: int = 16
    # Uploads held in memory at once: each holds up to max_bytes until stored.
    max_uploads: int = 4
    # Of those, one tenant's: a tenant uploading in a loop leaves the rest to others.
    max_uploads_per_tenant: int = 1


@dataclass(frozen=True, slots=True)
class Adapter:
    """An adapter's description and config; its weights are stored beside it."""

    adapter_id: str
    tenant_id: str
    name: str
    base_model: str
    rank: int
    size_bytes: int
    sha256: str
    config_json: bytes
    create_time: datetime


def new_adapter_id() -> str:
    return ADAPTER_ID_PREFIX + secrets.token_hex(_ID_BYTES)


def is_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def check_name(name: str) -> None:
    if not name:
        raise InvalidArgumentError("name", "required")
    if not is_name(name):
        raise InvalidArgumentError("name", f"must be {_NAME_RULE}")


def check_base_model(base_model: str) -> None:
    if not base_model:
        raise InvalidArgumentError("base_model", "required")
    if len(base_model.encode()) > MAX_MODEL_NAME_BYTES:
        raise InvalidArgumentError("base_model", f"over {MAX_MODEL_NAME_BYTES} bytes")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_object(data: bytes, field: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InvalidArgumentError(field, f"not JSON: {str(err)[:200]}") from err
    if not isinstance(parsed, dict):
        raise InvalidArgumentError(field, "must be a JSON object")
    return parsed


def check_config(config_json: bytes, max_rank: int) -> int:
    """The LoRA rank of a valid adapter_config.json."""
    field = "config_json"
    if not config_json:
        raise InvalidArgumentError(field, "required")
    if len(config_json) > MAX_CONFIG_BYTES:
        raise InvalidArgumentError(field, f"over {MAX_CONFIG_BYTES} bytes")
    config = _json_object(config_json, field)
    if config.get("peft_type") != "LORA":
        raise InvalidArgumentError(field, 'peft_type must be "LORA"')
    rank = config.get("r")
    if not _is_int(rank) or not 1 <= rank <= max_rank:
        raise InvalidArgumentError(field, f"r must be an integer from 1 to {max_rank}")
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict) or not all(
        _is_int(r) and 1 <= r <= max_rank for r in pattern.values()
    ):
        raise InvalidArgumentError(
            field, f"rank_pattern must map module names to integers from 1 to {max_rank}"
        )
    modules = config.get("target_modules")
    if (
        not isinstance(modules, list)
        or not 1 <= len(modules) <= MAX_TARGET_MODULES
        or not all(isinstance(m, str) and 1 <= len(m) <= MAX_TARGET_MODULE_CHARS for m in modules)
    ):
        raise InvalidArgumentError(
            field,
            f"target_modules must be a list of 1 to {MAX_TARGET_MODULES} names"
            f" of 1 to {MAX_TARGET_MODULE_CHARS} characters",
        )
    return rank


def check_safetensors(weights: bytes | bytearray) -> None:
    """A well-formed safetensors file: the header's length, a JSON object
    header within bounds, every tensor's data_offsets inside the data."""
    field = "weights"
    if len(weights) < _LENGTH_BYTES:
        raise InvalidArgumentError(field, "not a safetensors file: shorter than its header length")
    (header_len,) = struct.unpack_from("<Q", weights)
    if header_len > MAX_HEADER_BYTES:
        raise InvalidArgumentError(field, f"safetensors header over {MAX_HEADER_BYTES} bytes")
    data_start = _LENGTH_BYTES + header_len
    if data_start > len(weights):
        raise InvalidArgumentError(field, "safetensors header runs past the end of the file")
    header = _json_object(bytes(weights[_LENGTH_BYTES:data_start]), field)
    data_len = len(weights) - data_start
    tensors = 0
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        shown = tensor[:64]
        if not isinstance(info, dict):
            raise InvalidArgumentError(field, f"tensor {shown!r}: not an object")
        shape = info.get("shape")
        width = _DTYPE_BYTES.get(info.get("dtype"))  # type: ignore[arg-type]
        if width is None or not (
            isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)
        ):
            raise InvalidArgumentError(
                field, f"tensor {shown!r}: needs a safetensors dtype and a shape"
            )
        offsets = info.get("data_offsets")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise InvalidArgumentError(
                field, f"tensor {shown!r}: data_offsets must lie within the {data_len} data bytes"
            )
        if offsets[1] - offsets[0] != width * math.prod(shape):
            raise InvalidArgumentError(
                field, f"tensor {shown!r}: data_offsets must span its shape's {info['dtype']} bytes"
            )
        tensors += 1
    if tensors == 0:
        raise InvalidArgumentError(field, "safetensors file holds no tensors")


class Upload:
    """One adapter arriving: its spec checked, its weights bounded as they come."""

    def __init__(
        self, tenant_id: str, name: str, base_model: str, config_json: bytes, rank: int, limit: int
    ) -> None:
        self.tenant_id = tenant_id
        self.name = name
        self.base_model = base_model
        self.config_json = config_json
        self.rank = rank
        self._limit = limit
        self._weights = bytearray()

    def add(self, chunk: bytes) -> None:
        if len(chunk) > CHUNK_BYTES:
            raise InvalidArgumentError("weights_chunk", f"over {CHUNK_BYTES} bytes")
        if len(self._weights) + len(chunk) > self._limit:
            raise InvalidArgumentError("weights", f"over {self._limit} bytes")
        self._weights += chunk

    @property
    def weights(self) -> bytes:
        return bytes(self._weights)


# About one upload's time: a few MiB a second, a few MiB each.
UPLOAD_RETRY_AFTER_S = 1.0


class UploadPlace:
    """One upload's place, and its tenant's once the tenant is known."""

    def __init__(self, by_tenant: Counter[str], per_tenant: int) -> None:
        self._by_tenant = by_tenant
        self._per_tenant = per_tenant
        self._tenant: str | None = None

    def claim(self, tenant_id: str) -> None:
        """RESOURCE_EXHAUSTED when the tenant already has its uploads running."""
        if self._by_tenant[tenant_id] >= self._per_tenant:
            raise ResourceExhaustedError(
                f"this tenant has {self._per_tenant} adapter upload(s) running; "
                "try again when it ends",
                retry_after_s=UPLOAD_RETRY_AFTER_S,
                subject="adapter_uploads:tenant",
            )
        self._by_tenant[tenant_id] += 1
        self._tenant = tenant_id

    def release(self) -> None:
        if self._tenant is not None:
            self._by_tenant[self._tenant] -= 1
            if not self._by_tenant[self._tenant]:
                del self._by_tenant[self._tenant]
            self._tenant = None


class Adapters:
    """The registry over the store."""

    def __init__(self, store: AuthStore, settings: AdapterSettings = AdapterSettings()) -> None:
        self._store = store
        self._settings = settings
        self._uploads = 0
        self._by_tenant: Counter[str] = Counter()

    @contextmanager
    def uploading(self) -> Iterator[UploadPlace]:
        """One upload's place among max_uploads; RESOURCE_EXHAUSTED when none
        is free (a burst of uploads must not hold gigabytes here). The place
        claims its tenant's share once the tenant is read."""
        if self._uploads >= self._settings.max_uploads:
            raise ResourceExhaustedError(
                f"{self._settings.max_uploads} adapter uploads are running; try again shortly",
                retry_after_s=UPLOAD_RETRY_AFTER_S,
                subject="adapter_uploads",
            )
        self._uploads += 1
        place = UploadPlace(self._by_tenant, self._settings.max_uploads_per_tenant)
        try:
            yield place
        finally:
            self._uploads -= 1
            place.release()

    async def begin(self, tenant_id: str, name: str, base_model: str, config_json: bytes) -> Upload:
        """Checks the spec before any weights are read."""
        check_name(name)
        check_base_model(base_model)
        rank = check_config(config_json, self._settings.max_rank)
        if await self._store.get_tenant(tenant_id) is None:
            raise NotFoundError(f"no tenant {tenant_id!r}")
        # Early, to spare the upload; the store's unique key is what decides.
        if await self._store.find_adapter(tenant_id, name) is not None:
            raise _taken(name)
        return Upload(tenant_id, name, base_model, config_json, rank, self._settings.max_bytes)

    async def finish(self, upload: Upload) -> Adapter:
        weights = upload.weights
        if not weights:
            raise InvalidArgumentError("weights", "required")
        check_safetensors(weights)
        adapter = Adapter(
            adapter_id=new_adapter_id(),
            tenant_id=upload.tenant_id,
            name=upload.name,
            base_model=upload.base_model,
            rank=upload.rank,
            size_bytes=len(weights),
            sha256=hashlib.sha256(weights).hexdigest(),
            config_json=upload.config_json,
            create_time=datetime.now(UTC),
        )
        try:
            await self._store.create_adapter(adapter, weights, self._settings.max_per_tenant)
        except AdapterNameTakenError as err:
            raise _taken(upload.name) from err
        except AdapterLimitError as err:
            raise FailedPreconditionError(
                f"tenant holds {self._settings.max_per_tenant} adapters, the most it may;"
                " delete one first",
                reason="ADAPTER_LIMIT",
            ) from err
        return adapter

    async def list(self, tenant_id: str) -> list[Adapter]:
        return await self._store.list_adapters(tenant_id)

    async def resolve(self, tenant_id: str, name: str) -> Adapter:
        """The tenant's adapter by name; NOT_FOUND for any other tenant's."""
        found = await self._store.find_adapter(tenant_id, name) if is_name(name) else None
        if found is None:
            raise NotFoundError(f"no adapter {name[:64]!r}")
        return found

    async def delete(self, tenant_id: str, name: str) -> Adapter:
        check_name(name)
        deleted = await self._store.delete_adapter(tenant_id, name)
        if deleted is None:
            raise NotFoundError(f"no adapter {name!r}")
        return deleted

    async def fetch(self, adapter_id: str) -> tuple[Adapter, AsyncIterator[bytes]]:
        """The adapter and its weights in chunks of at most CHUNK_BYTES."""
        found = await self._store.adapter_with_weights(adapter_id)
        if found is None:
            raise NotFoundError(f"no adapter {adapter_id[:64]!r}")
        adapter, weights = found

        async def chunks() -> AsyncIterator[bytes]:
            for at in range(0, len(weights), CHUNK_BYTES):
                yield weights[at : at + CHUNK_BYTES]

        return adapter, chunks()


def _taken(name: str) -> AlreadyExistsError:
    return AlreadyExistsError(f"an adapter named {name!r} exists", metadata={"field": "name"})
