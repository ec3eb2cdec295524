"""Tenants' private adapters through the gateway, on a whole mesh with a
simulated engine: tenant A uploads the tiny model's real LoRA files, lists
them and sees the adapter among its models (gRPC and /v1/models); tenant B
sees none of it and gets NOT_FOUND for A's name exactly as for a model that
does not exist; bad uploads are refused naming their field, and a key
without the `adapters` scope may list but neither create nor delete.
Polling the model list costs the router and the registry one call per
window, and a tenant's own create or delete shows in its next list."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from local_models.tiny_llama import build_tiny_adapter
from maas.v1 import (
    adapter_pb2,
    auth_pb2,
    auth_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    generation_pb2,
)
from services.mesh import InMemoryTelemetry, MeshOptions, RunningMesh, running_mesh
from tests.support import bad_request_fields, eventually

MODEL = "sim-tiny"
SIM: dict[str, Any] = {"engine": "sim", "sim_profile": "tiny-cpu", "stream_messages_per_s": 0}
# The registry's bound on one upload message's weights.
CHUNK_BYTES = 1024 * 1024

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Key:
    tenant_id: str
    api_key: str

    @property
    def metadata(self) -> Metadata:
        return (("authorization", f"Bearer {self.api_key}"),)


async def new_key(mesh: RunningMesh, admin: Metadata, tenant_id: str = "", **kw: Any) -> Key:
    async with grpc.aio.insecure_channel(mesh.targets["auth"]) as ch:
        auth = auth_pb2_grpc.AuthStub(ch)
        if not tenant_id:
            tenant = await auth.CreateTenant(
                auth_pb2.CreateTenantRequest(
                    name=f"t-{secrets.token_hex(4)}", plan=auth_pb2.Plan()
                ),
                metadata=admin,
            )
            tenant_id = tenant.tenant_id
        key = await auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant_id, **kw), metadata=admin
        )
    return Key(tenant_id, key.api_key)


def uploads(
    name: str, base: str, config: bytes, weights: bytes, size: int = CHUNK_BYTES
) -> list[adapter_pb2.AdapterUpload]:
    spec = adapter_pb2.AdapterSpec(name=name, base_model=base, config_json=config)
    return [
        adapter_pb2.AdapterUpload(spec=spec),
        *(
            adapter_pb2.AdapterUpload(weights_chunk=weights[at : at + size])
            for at in range(0, len(weights), size)
        ),
    ]


async def stream(
    messages: Iterable[adapter_pb2.AdapterUpload],
) -> AsyncIterator[adapter_pb2.AdapterUpload]:
    for message in messages:
        yield message


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def generate_refusal(
    gateway: gateway_pb2_grpc.GatewayAsyncStub, model: str, key: Key
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in gateway.Generate(
            generation_pb2.GenerateRequest(model=model, prompt="hello", max_tokens=4),
            metadata=key.metadata,
        ):
            pass
    return err.value


async def test_a_tenants_adapter_is_its_own(tmp_path: Path) -> None:
    built = build_tiny_adapter(tmp_path / "lora", rank=8, seed=5)
    config = (built / "adapter_config.json").read_bytes()
    weights = (built / "adapter_model.safetensors").read_bytes()
    options = MeshOptions(state=tmp_path / "mesh", model=MODEL, overrides={"inference": SIM})
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    async with running_mesh(options) as mesh:
        a, b = await new_key(mesh, admin), await new_key(mesh, admin)
        a_generate_only = await new_key(mesh, admin, a.tenant_id, scopes=["generate"])
        async with (
            grpc.aio.insecure_channel(mesh.target("gateway")) as ch,
            httpx.AsyncClient(base_url=f"http://{mesh.target('gateway', 'http_port')}") as http,
        ):
            gateway = gateway_pb2_grpc.GatewayStub(ch)
            created = await gateway.CreateAdapter(
                stream(uploads("my-lora", MODEL, config, weights, size=4096)),
                metadata=a.metadata,
            )
            assert created.adapter_id.startswith("ad-")
            assert (created.tenant_id, created.name, created.base_model) == (
                a.tenant_id,
                "my-lora",
                MODEL,
            )
            assert (created.rank, created.size_bytes) == (8, len(weights))

            listed = await gateway.ListAdapters(
                adapter_pb2.ListAdaptersRequest(), metadata=a_generate_only.metadata
            )
            assert list(listed.adapters) == [created]
            models = {
                m.name: m
                for m in (
                    await gateway.ListModels(gateway_pb2.ListModelsRequest(), metadata=a.metadata)
                ).models
            }
            base, mine = models[MODEL], models["my-lora"]
            assert mine.base_model == MODEL
            assert (mine.kind, mine.max_context_length) == (base.kind, base.max_context_length)
            a_http = (
                await http.get("/v1/models", headers={"authorization": f"Bearer {a.api_key}"})
            ).json()
            assert "my-lora" in {m["id"] for m in a_http["data"]}

            # Tenant B: nothing listed, and A's name is a model that does not exist.
            listed_b = await gateway.ListAdapters(
                adapter_pb2.ListAdaptersRequest(), metadata=b.metadata
            )
            assert list(listed_b.adapters) == []
            b_models = await gateway.ListModels(
                gateway_pb2.ListModelsRequest(), metadata=b.metadata
            )
            assert "my-lora" not in {m.name for m in b_models.models}
            b_http = (
                await http.get("/v1/models", headers={"authorization": f"Bearer {b.api_key}"})
            ).json()
            assert "my-lora" not in {m["id"] for m in b_http["data"]}
            theirs = await generate_refusal(gateway, "my-lora", b)
            unknown = await generate_refusal(gateway, "no-such-model", b)
            assert theirs.code() == unknown.code() == grpc.StatusCode.NOT_FOUND
            assert theirs.details() == (unknown.details() or "").replace("no-such-model", "my-lora")
            counted = await refused(
                gateway.CountTokens(
                    generation_pb2.CountTokensRequest(model="my-lora", prompt="hi"),
                    metadata=b.metadata,
                )
            )
            assert counted.code() == grpc.StatusCode.NOT_FOUND
            b_http_chat = await http.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {b.api_key}"},
                json={"model": "my-lora", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert b_http_chat.status_code == 404
            deleted_by_b = await refused(
                gateway.DeleteAdapter(
                    adapter_pb2.DeleteAdapterRequest(name="my-lora"), metadata=b.metadata
                )
            )
            assert deleted_by_b.code() == grpc.StatusCode.NOT_FOUND

            # A key without the `adapters` scope may neither create nor delete.
            for call in (
                gateway.CreateAdapter(
                    stream(uploads("other", MODEL, config, weights)),
                    metadata=a_generate_only.metadata,
                ),
                gateway.DeleteAdapter(
                    adapter_pb2.DeleteAdapterRequest(name="my-lora"),
                    metadata=a_generate_only.metadata,
                ),
            ):
                assert (await refused(call)).code() == grpc.StatusCode.PERMISSION_DENIED

            # A counts tokens with its adapter: the base model's tokenizer.
            count = await gateway.CountTokens(
                generation_pb2.CountTokensRequest(model="my-lora", prompt="hello there"),
                metadata=a.metadata,
            )
            assert count.token_count > 0

            deleted = await gateway.DeleteAdapter(
                adapter_pb2.DeleteAdapterRequest(name="my-lora"), metadata=a.metadata
            )
            assert deleted.adapter == created
            gone = await generate_refusal(gateway, "my-lora", a)
            assert gone.code() == grpc.StatusCode.NOT_FOUND
            listed = await gateway.ListAdapters(
                adapter_pb2.ListAdaptersRequest(), metadata=a.metadata
            )
            assert list(listed.adapters) == []


async def test_polling_the_model_list_costs_one_call_per_window_and_own_changes_show_at_once(
    tmp_path: Path,
) -> None:
    built = build_tiny_adapter(tmp_path / "lora", rank=4, seed=6)
    config = (built / "adapter_config.json").read_bytes()
    weights = (built / "adapter_model.safetensors").read_bytes()
    gateway_settings = {
        # Windows no test run outlasts: every call past the first is a cache hit.
        "model_list_ttl_s": 600.0,
        "adapter_cache_ttl_s": 600.0,
        "read_burst": 1e6,
    }
    options = MeshOptions(
        state=tmp_path / "mesh",
        model=MODEL,
        overrides={"inference": SIM, "gateway": gateway_settings},
    )
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    telemetry = InMemoryTelemetry()

    def calls(service: str, method: str) -> int:
        spans = telemetry.spans[service].get_finished_spans()
        return sum(1 for s in spans if s.name.endswith(f"/{method}"))

    async with running_mesh(options, telemetry=telemetry) as mesh:
        a, b = await new_key(mesh, admin), await new_key(mesh, admin)
        async with grpc.aio.insecure_channel(mesh.target("gateway")) as ch:
            gateway = gateway_pb2_grpc.GatewayStub(ch)

            async def names(key: Key) -> set[str]:
                listed = await gateway.ListModels(
                    gateway_pb2.ListModelsRequest(), metadata=key.metadata
                )
                return {m.name for m in listed.models}

            replicas_before = calls("router", "ListReplicas")
            listings_before = calls("auth", "ListAdapters")
            for _ in range(5):
                assert await names(a) == {MODEL}
            await eventually(lambda: calls("router", "ListReplicas") > replicas_before)
            assert calls("router", "ListReplicas") == replicas_before + 1
            assert calls("auth", "ListAdapters") == listings_before + 1
            # Another tenant: its own adapter list, the same replica list.
            for _ in range(3):
                assert await names(b) == {MODEL}
            assert calls("router", "ListReplicas") == replicas_before + 1
            assert calls("auth", "ListAdapters") == listings_before + 2

            # A's own create and delete through this gateway show in its next list.
            await gateway.CreateAdapter(
                stream(uploads("my-lora", MODEL, config, weights)), metadata=a.metadata
            )
            assert await names(a) == {MODEL, "my-lora"}
            assert await names(b) == {MODEL}
            await gateway.DeleteAdapter(
                adapter_pb2.DeleteAdapterRequest(name="my-lora"), metadata=a.metadata
            )
            assert await names(a) == {MODEL}
            assert calls("router", "ListReplicas") == replicas_before + 1


async def test_bad_uploads_are_refused_naming_their_field(tmp_path: Path) -> None:
    config = json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}).encode()
    header = json.dumps({"w": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}).encode()
    good = len(header).to_bytes(8, "little") + header + bytes(8)
    options = MeshOptions(state=tmp_path / "mesh", model=MODEL, overrides={"inference": SIM})
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    spec = adapter_pb2.AdapterUpload(
        spec=adapter_pb2.AdapterSpec(name="x", base_model=MODEL, config_json=config)
    )
    cases: dict[str, tuple[list[adapter_pb2.AdapterUpload], grpc.StatusCode, str]] = {
        "unknown base model": (
            uploads("x", "no-such-model", config, good),
            grpc.StatusCode.INVALID_ARGUMENT,
            "base_model",
        ),
        "no base model": (
            uploads("x", "", config, good),
            grpc.StatusCode.INVALID_ARGUMENT,
            "base_model",
        ),
        "a served model's name": (
            uploads(MODEL, MODEL, config, good),
            grpc.StatusCode.ALREADY_EXISTS,
            "",
        ),
        "weights first": (
            [adapter_pb2.AdapterUpload(weights_chunk=good), spec],
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec",
        ),
        "nothing sent": ([], grpc.StatusCode.INVALID_ARGUMENT, "spec"),
        "spec twice": ([spec, spec], grpc.StatusCode.INVALID_ARGUMENT, "spec"),
        "chunk of 1 MiB + 1": (
            [spec, adapter_pb2.AdapterUpload(weights_chunk=bytes(CHUNK_BYTES + 1))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "weights_chunk",
        ),
        "bad name": (
            uploads("Bad Name", MODEL, config, good),
            grpc.StatusCode.INVALID_ARGUMENT,
            "name",
        ),
        "not LoRA": (
            uploads("x", MODEL, b'{"peft_type": "IA3"}', good),
            grpc.StatusCode.INVALID_ARGUMENT,
            "config_json",
        ),
        "not safetensors": (
            uploads("x", MODEL, config, b"not a safetensors file"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "weights",
        ),
        "offsets past the end": (
            uploads("x", MODEL, config, good[:-1]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "weights",
        ),
    }
    async with running_mesh(options) as mesh:
        key = await new_key(mesh, admin)
        async with grpc.aio.insecure_channel(mesh.target("gateway")) as ch:
            gateway = gateway_pb2_grpc.GatewayStub(ch)
            for case, (messages, code, field) in cases.items():
                err = await refused(gateway.CreateAdapter(stream(messages), metadata=key.metadata))
                assert err.code() == code, (case, err.details())
                if field:
                    assert bad_request_fields(err) == [field], (case, err.details())
            listed = await gateway.ListAdapters(
                adapter_pb2.ListAdaptersRequest(), metadata=key.metadata
            )
            assert list(listed.adapters) == []
            # The same good files register.
            await gateway.CreateAdapter(
                stream(uploads("x", MODEL, config, good)), metadata=key.metadata
            )
            # A delete names its adapter: a hostile name is refused naming `name`.
            for name in ("", "Bad Name", "x" * 100_000):
                err = await refused(
                    gateway.DeleteAdapter(
                        adapter_pb2.DeleteAdapterRequest(name=name), metadata=key.metadata
                    )
                )
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name[:16], err.details())
                assert bad_request_fields(err) == ["name"], (name[:16], err.details())
