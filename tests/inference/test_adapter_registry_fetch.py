"""A replica loads a tenant's adapter from the real adapter registry (auth,
in the in-process mesh with its service token): registered once, fetched
by id on the replica's first request for it, generated with through the
router; an id the registry does not know is NOT_FOUND."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest

from local_models.tiny_llama import build_tiny_adapter
from maas.v1 import (
    adapter_pb2,
    adapter_registry_pb2,
    adapter_registry_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    generation_pb2,
    router_pb2,
    router_pb2_grpc,
)
from observability.channels import SERVICE_TOKEN_METADATA_KEY
from services.mesh import MeshOptions, running_mesh

MODEL = "sim-tiny"


async def test_a_replica_fetches_a_registered_adapter_and_generates_with_it(
    tmp_path: Path,
) -> None:
    token = secrets.token_urlsafe(32)
    options = MeshOptions(
        state=tmp_path,
        model=MODEL,
        service_token=token,
        overrides={
            "inference": {
                "engine": "sim",
                "sim_profile": "tiny-cpu",
                "adapter_slots": 1,
                "sim_adapter_load_s": 0.0,
                "adapter_cache_dir": tmp_path / "cache",
            }
        },
    )
    mesh_token = ((SERVICE_TOKEN_METADATA_KEY, token),)
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    folder = build_tiny_adapter(tmp_path / "lora", rank=4, seed=3)
    async with running_mesh(options) as mesh:
        async with grpc.aio.insecure_channel(mesh.target("auth")) as ch:
            tenant = await auth_pb2_grpc.AuthStub(ch).CreateTenant(
                auth_pb2.CreateTenantRequest(name="t", plan=auth_pb2.Plan()), metadata=admin
            )
            Upload = adapter_registry_pb2.RegistryAdapterUpload
            parts = [
                Upload(tenant_id=tenant.tenant_id),
                Upload(
                    upload=adapter_pb2.AdapterUpload(
                        spec=adapter_pb2.AdapterSpec(
                            name="mine",
                            base_model=MODEL,
                            config_json=(folder / "adapter_config.json").read_bytes(),
                        )
                    )
                ),
                Upload(
                    upload=adapter_pb2.AdapterUpload(
                        weights_chunk=(folder / "adapter_model.safetensors").read_bytes()
                    )
                ),
            ]
            registry = adapter_registry_pb2_grpc.AdapterRegistryStub(ch)
            adapter = await registry.CreateAdapter(iter(parts), metadata=mesh_token)

        async with grpc.aio.insecure_channel(mesh.target("router")) as ch:
            router = router_pb2_grpc.RouterStub(ch)

            def generate(adapter_id: str) -> router_pb2.RouterGenerateRequest:
                return router_pb2.RouterGenerateRequest(
                    request=generation_pb2.GenerateRequest(
                        model=MODEL, prompt="hello", max_tokens=6, ignore_eos=True
                    ),
                    context=router_pb2.RequestContext(tenant_id=tenant.tenant_id),
                    adapter_id=adapter_id,
                )

            async def tokens(adapter_id: str) -> list[int]:
                call = router.Generate(generate(adapter_id), metadata=mesh_token)
                return [t async for chunk in call for t in chunk.token_ids]

            base = await tokens("")
            adapted = await tokens(adapter.adapter_id)
            assert len(adapted) == 6 and adapted != base
            (cached,) = (tmp_path / "cache").iterdir()
            assert cached.name.startswith(adapter.adapter_id)
            assert (cached / "adapter_model.safetensors").read_bytes() == (
                folder / "adapter_model.safetensors"
            ).read_bytes()

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await tokens("ad-" + "0" * 24)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
