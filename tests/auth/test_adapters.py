"""maas.v1.AdapterRegistry over a real gRPC server, on both stores: adapters
round-trip byte for byte, stay their tenant's, and every hostile upload is
refused naming its field before anything past a bound is kept."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from maas.v1 import adapter_pb2, adapter_registry_pb2, adapter_registry_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.auth.adapters import CHUNK_BYTES
from services.auth.core import AuthCore
from services.auth.server import serving
from services.auth.settings import AuthSettings
from services.auth.store import AuthStore
from tests.auth.conftest import ADMIN_TOKEN, PEPPER
from tests.support import bad_request_fields, eventually

Upload = adapter_registry_pb2.RegistryAdapterUpload

CONFIG = json.dumps(
    {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
).encode()


def safetensors(data_bytes: int, header: dict[str, object] | None = None) -> bytes:
    """A safetensors file of one uint8 tensor over `data_bytes` bytes, with the
    standard library: the header's length, the JSON header, the data."""
    if header is None:
        header = {"w": {"dtype": "U8", "shape": [data_bytes], "data_offsets": [0, data_bytes]}}
    encoded = json.dumps(header).encode()
    # Bytes that differ along the file, so a reordered chunk would show.
    data = bytes((i * 7 + i // 251) % 256 for i in range(data_bytes))
    return struct.pack("<Q", len(encoded)) + encoded + data


def spec(name: str = "my-lora", base: str = "tiny", config: bytes = CONFIG) -> Upload:
    return Upload(
        upload=adapter_pb2.AdapterUpload(
            spec=adapter_pb2.AdapterSpec(name=name, base_model=base, config_json=config)
        )
    )


def chunks(weights: bytes, size: int = CHUNK_BYTES) -> list[Upload]:
    return [
        Upload(upload=adapter_pb2.AdapterUpload(weights_chunk=weights[at : at + size]))
        for at in range(0, len(weights), size)
    ]


def upload(
    tenant: str, weights: bytes, name: str = "my-lora", base: str = "tiny", config: bytes = CONFIG
) -> list[Upload]:
    return [Upload(tenant_id=tenant), spec(name, base, config), *chunks(weights)]


async def stream(messages: Iterable[Upload]) -> AsyncIterator[Upload]:
    for message in messages:
        yield message


async def tenant(store: AuthStore, name: str) -> str:
    return (await AuthCore(store, PEPPER).create_tenant(name)).tenant_id


async def create(
    stub: adapter_registry_pb2_grpc.AdapterRegistryAsyncStub, messages: Iterable[Upload]
) -> adapter_pb2.Adapter:
    return await stub.CreateAdapter(stream(messages))


async def refused(
    stub: adapter_registry_pb2_grpc.AdapterRegistryAsyncStub, messages: Iterable[Upload]
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, messages)
    return err.value


async def not_found(
    stub: adapter_registry_pb2_grpc.AdapterRegistryAsyncStub, tenant_id: str, name: str
) -> None:
    """The tenant can neither resolve nor delete an adapter by that name."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ResolveAdapter(
            adapter_registry_pb2.ResolveAdapterRequest(tenant_id=tenant_id, name=name)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteAdapter(
            adapter_registry_pb2.RegistryDeleteAdapterRequest(tenant_id=tenant_id, name=name)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_adapter_round_trips_its_bytes_and_stays_its_tenants(
    store: AuthStore, auth_channel: grpc.aio.Channel
) -> None:
    stub = adapter_registry_pb2_grpc.AdapterRegistryStub(auth_channel)
    a, b = await tenant(store, "a"), await tenant(store, "b")
    # Over two chunks and a half: the fetch must put them back in order.
    weights = safetensors(2 * CHUNK_BYTES + CHUNK_BYTES // 2)

    created = await create(stub, upload(a, weights))
    assert created.adapter_id.startswith("ad-") and len(created.adapter_id) == 3 + 24
    int(created.adapter_id[3:], 16)
    assert (created.tenant_id, created.name, created.base_model) == (a, "my-lora", "tiny")
    assert (created.rank, created.size_bytes) == (8, len(weights))
    assert created.sha256 == hashlib.sha256(weights).hexdigest()

    listed = await stub.ListAdapters(adapter_registry_pb2.RegistryListAdaptersRequest(tenant_id=a))
    assert list(listed.adapters) == [created]
    resolved = await stub.ResolveAdapter(
        adapter_registry_pb2.ResolveAdapterRequest(tenant_id=a, name="my-lora")
    )
    assert resolved == created

    parts = [
        p
        async for p in stub.FetchAdapter(
            adapter_registry_pb2.FetchAdapterRequest(adapter_id=created.adapter_id)
        )
    ]
    assert parts[0].WhichOneof("part") == "head"
    assert parts[0].head.adapter == created and parts[0].head.config_json == CONFIG
    assert all(len(p.weights_chunk) <= CHUNK_BYTES for p in parts[1:])
    assert b"".join(p.weights_chunk for p in parts[1:]) == weights

    # Another tenant: nothing listed, nothing resolved, nothing deleted.
    other = await stub.ListAdapters(adapter_registry_pb2.RegistryListAdaptersRequest(tenant_id=b))
    assert list(other.adapters) == []
    await not_found(stub, b, "my-lora")
    # The other tenant may use the same name for its own.
    theirs = await create(stub, upload(b, weights))
    assert theirs.adapter_id != created.adapter_id

    # The name is taken within the tenant.
    taken = await refused(stub, upload(a, weights))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS

    deleted = await stub.DeleteAdapter(
        adapter_registry_pb2.RegistryDeleteAdapterRequest(tenant_id=a, name="my-lora")
    )
    assert deleted.adapter == created
    await not_found(stub, a, "my-lora")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.FetchAdapter(
            adapter_registry_pb2.FetchAdapterRequest(adapter_id=created.adapter_id)
        ):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # B's adapter of the same name is untouched.
    still = await stub.ResolveAdapter(
        adapter_registry_pb2.ResolveAdapterRequest(tenant_id=b, name="my-lora")
    )
    assert still == theirs


async def test_the_tiny_models_real_adapter_registers(
    store: AuthStore, auth_channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    from local_models.tiny_llama import build_tiny_adapter

    built = build_tiny_adapter(tmp_path / "lora", rank=8, seed=3)
    config = (built / "adapter_config.json").read_bytes()
    weights = (built / "adapter_model.safetensors").read_bytes()
    stub = adapter_registry_pb2_grpc.AdapterRegistryStub(auth_channel)
    a = await tenant(store, "a")
    messages = [Upload(tenant_id=a), spec(config=config), *chunks(weights)]
    created = await create(stub, messages)
    assert (created.rank, created.size_bytes) == (8, len(weights))


def _config(**changes: object) -> bytes:
    config: dict[str, object] = json.loads(CONFIG)
    config.update(changes)
    return json.dumps(config).encode()


def _header(offsets: list[int], data_bytes: int = 16) -> bytes:
    return safetensors(
        data_bytes, {"w": {"dtype": "U8", "shape": [data_bytes], "data_offsets": offsets}}
    )


GOOD = safetensors(64)
SPEC_UPLOAD = adapter_pb2.AdapterUpload(
    spec=adapter_pb2.AdapterSpec(name="x", base_model="tiny", config_json=CONFIG)
)


def _hostile(t: str) -> dict[str, tuple[list[Upload], str]]:
    """Each hostile upload of tenant `t` and the field it must be refused naming."""
    huge_header = struct.pack("<Q", 2**63) + b"{}"
    return {
        "no tenant": ([spec(), *chunks(GOOD)], "tenant_id"),
        "tenant twice": ([Upload(tenant_id=t), Upload(tenant_id=t), spec()], "tenant_id"),
        "no messages": ([], "tenant_id"),
        "missing spec": ([Upload(tenant_id=t), *chunks(GOOD)], "spec"),
        "no spec at all": ([Upload(tenant_id=t)], "spec"),
        "spec twice": ([Upload(tenant_id=t), spec(), spec(), *chunks(GOOD)], "spec"),
        "spec after weights": ([Upload(tenant_id=t), spec(), *chunks(GOOD), spec()], "spec"),
        "10k-char name": (upload(t, GOOD, name="a" * 10_000), "name"),
        "empty name": (upload(t, GOOD, name=""), "name"),
        "upper-case name": (upload(t, GOOD, name="MyLora"), "name"),
        "name starting with a dot": (upload(t, GOOD, name=".lora"), "name"),
        "65-char name": (upload(t, GOOD, name="a" * 65), "name"),
        "no base model": (upload(t, GOOD, base=""), "base_model"),
        "10k-char base model": (upload(t, GOOD, base="m" * 10_000), "base_model"),
        "config not JSON": (upload(t, GOOD, config=b"{nope"), "config_json"),
        "config a list": (upload(t, GOOD, config=b"[]"), "config_json"),
        "config over 64 KiB": (
            upload(t, GOOD, config=_config(pad="x" * 65 * 1024)),
            "config_json",
        ),
        "not LoRA": (upload(t, GOOD, config=_config(peft_type="IA3")), "config_json"),
        "rank 0": (upload(t, GOOD, config=_config(r=0)), "config_json"),
        "rank 2^63": (upload(t, GOOD, config=_config(r=2**63)), "config_json"),
        "rank past the setting": (upload(t, GOOD, config=_config(r=65)), "config_json"),
        "rank a string": (upload(t, GOOD, config=_config(r="8")), "config_json"),
        "rank true": (upload(t, GOOD, config=_config(r=True)), "config_json"),
        "rank_pattern a bool": (
            upload(t, GOOD, config=_config(rank_pattern={"q_proj": True})),
            "config_json",
        ),
        "rank_pattern past the setting": (
            upload(t, GOOD, config=_config(rank_pattern={"q_proj": 65})),
            "config_json",
        ),
        "no target modules": (
            upload(t, GOOD, config=_config(target_modules=[])),
            "config_json",
        ),
        "a 10k-char target module": (
            upload(t, GOOD, config=_config(target_modules=["q" * 10_000])),
            "config_json",
        ),
        "no weights": ([Upload(tenant_id=t), spec()], "weights"),
        "weights not safetensors": (upload(t, b"hello"), "weights"),
        "huge declared header": (upload(t, huge_header), "weights"),
        "header past the end": (upload(t, struct.pack("<Q", 1000) + b"{}"), "weights"),
        "header not JSON": (upload(t, struct.pack("<Q", 3) + b"{no"), "weights"),
        "offsets past the end": (upload(t, _header([0, 17])), "weights"),
        "offsets 2^63": (upload(t, _header([0, 2**63])), "weights"),
        "offsets reversed": (upload(t, _header([8, 4])), "weights"),
        "offsets negative": (upload(t, _header([-1, 4])), "weights"),
        "offsets short of the shape": (upload(t, _header([0, 8])), "weights"),
        "unknown dtype": (
            upload(t, safetensors(4, {"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}})),
            "weights",
        ),
        "shape of 2^63": (
            upload(
                t, safetensors(4, {"w": {"dtype": "U8", "shape": [2**63], "data_offsets": [0, 4]}})
            ),
            "weights",
        ),
        "no tensors": (upload(t, safetensors(0, {"__metadata__": {}})), "weights"),
        "chunk of 1 MiB + 1": (
            [Upload(tenant_id=t), spec(), *chunks(safetensors(CHUNK_BYTES + 64), CHUNK_BYTES + 1)],
            "weights_chunk",
        ),
    }


async def test_every_hostile_upload_is_refused_naming_its_field(
    store: AuthStore, auth_channel: grpc.aio.Channel
) -> None:
    stub = adapter_registry_pb2_grpc.AdapterRegistryStub(auth_channel)
    t = await tenant(store, "hostile")
    for case, (messages, field) in _hostile(t).items():
        err = await refused(stub, messages)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.details())
        assert bad_request_fields(err) == [field], (case, err.details())
    listed = await stub.ListAdapters(adapter_registry_pb2.RegistryListAdaptersRequest(tenant_id=t))
    assert list(listed.adapters) == []
    # An unknown tenant is refused too, before any weights are read.
    err = await refused(stub, upload("t-unknown", GOOD))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@asynccontextmanager
async def _small_registry(
    store: AuthStore, tmp_path: Path, **changes: object
) -> AsyncIterator[adapter_registry_pb2_grpc.AdapterRegistryAsyncStub]:
    settings = AuthSettings.model_validate(
        {
            "port": 0,
            "admin_token": ADMIN_TOKEN,
            "key_pepper": PEPPER.decode(),
            "database_path": tmp_path / "auth.db",
            **changes,
        }
    )
    telemetry = setup("auth", TelemetrySettings())
    async with (
        serving(settings, telemetry, store=store) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield adapter_registry_pb2_grpc.AdapterRegistryStub(channel)
    telemetry.shutdown()


async def test_the_weights_and_the_tenants_count_are_bounded(
    store: AuthStore, tmp_path: Path
) -> None:
    async with _small_registry(
        store, tmp_path, max_adapter_bytes=CHUNK_BYTES, max_adapters_per_tenant=2
    ) as stub:
        t = await tenant(store, "bounded")
        # One byte past the bound, in small chunks: refused as it arrives.
        over = safetensors(CHUNK_BYTES)
        err = await refused(stub, [Upload(tenant_id=t), spec(), *chunks(over, 64 * 1024)])
        assert bad_request_fields(err) == ["weights"]
        for name in ("one", "two"):
            await create(stub, upload(t, GOOD, name=name))
        err = await refused(stub, upload(t, GOOD, name="three"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        await stub.DeleteAdapter(
            adapter_registry_pb2.RegistryDeleteAdapterRequest(tenant_id=t, name="one")
        )
        await create(stub, upload(t, GOOD, name="three"))


async def test_the_registry_answers_the_mesh_only(store: AuthStore, tmp_path: Path) -> None:
    """With the service token set, a caller without it gets nowhere."""
    async with _small_registry(store, tmp_path, service_token="s" * 32) as stub:
        t = await tenant(store, "outside")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListAdapters(adapter_registry_pb2.RegistryListAdaptersRequest(tenant_id=t))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_uploads_held_at_once_are_bounded(store: AuthStore, tmp_path: Path) -> None:
    async with _small_registry(store, tmp_path, max_adapter_uploads=1) as stub:
        t = await tenant(store, "busy")
        held = stub.CreateAdapter()
        for message in (Upload(tenant_id=t), spec(name="held")):
            await held.write(message)
        tries = iter(range(1000))

        async def refused_while_held() -> bool:
            # Until the held upload's handler runs, another one goes through.
            try:
                await create(stub, upload(t, GOOD, name=f"other-{next(tries)}"))
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return True
            return False

        await eventually(refused_while_held)
        for message in chunks(GOOD):
            await held.write(message)
        await held.done_writing()
        assert (await held).name == "held"
        # Its place is free again.
        await create(stub, upload(t, GOOD, name="after"))


async def test_one_tenant_cannot_take_every_upload_place(store: AuthStore, tmp_path: Path) -> None:
    """A tenant holding its one upload open is refused a second, while
    another tenant's upload goes through meanwhile."""
    async with _small_registry(store, tmp_path, max_adapter_uploads=4) as stub:
        busy, other = await tenant(store, "busy"), await tenant(store, "other")
        held = stub.CreateAdapter()
        for message in (Upload(tenant_id=busy), spec(name="held")):
            await held.write(message)
        tries = iter(range(1000))

        async def refused_while_held() -> bool:
            # Until the held upload's handler has read its tenant, another goes through.
            try:
                await create(stub, upload(busy, GOOD, name=f"again-{next(tries)}"))
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "this tenant" in (err.details() or "")
                return True
            return False

        await eventually(refused_while_held)
        assert (await create(stub, upload(other, GOOD, name="theirs"))).name == "theirs"
        for message in chunks(GOOD):
            await held.write(message)
        await held.done_writing()
        assert (await held).name == "held"
        # The tenant's place is free again.
        assert (await create(stub, upload(busy, GOOD, name="after"))).name == "after"
