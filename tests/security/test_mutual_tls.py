"""The mesh with mutual TLS on every inner hop (as `make run TLS=1`): a
completion streams end to end through TLS at the gateway and mTLS behind it;
callers without a mesh certificate never get past the handshake."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.local.throwaway_ca import OPERATOR, write_throwaway_ca
from maas.v1 import (
    generation_pb2,
    inference_pb2,
    inference_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from maas_cli.connection import Connection
from tests.security.conftest import INTERNAL, SERVICES, SecureMesh


async def health_of(connection: Connection, target: str) -> int:
    async with connection.channel(target) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    status: int = reply.status
    return status


async def test_a_completion_streams_end_to_end_over_mutual_tls(mtls_mesh: SecureMesh) -> None:
    api_key = await mtls_mesh.new_api_key()
    texts: list[str] = []
    finish = None
    async with mtls_mesh.tenant_client(api_key) as client:
        async for chunk in client.generate(
            mtls_mesh.model, prompt="Tell me about the sea.", max_tokens=8, seed=1
        ):
            texts.append(chunk.text)
            finish = chunk.finish_reason or finish
    assert len(texts) > 1, "streamed in more than one chunk"
    assert "".join(texts)
    assert finish


@pytest.mark.parametrize("service", INTERNAL)
async def test_a_client_without_a_certificate_is_refused_at_internal_services(
    mtls_mesh: SecureMesh, service: str
) -> None:
    assert mtls_mesh.certs is not None
    # TLS with the right CA, even the service token: but no client certificate.
    no_cert = Connection(ca=mtls_mesh.certs.ca, service_token=mtls_mesh.service_token)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health_of(no_cert, mtls_mesh.targets[service])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # The operator's certificate from the same CA gets through.
    assert await health_of(mtls_mesh.operator(), mtls_mesh.targets[service]) == (
        health_pb2.HealthCheckResponse.SERVING
    )


async def test_a_certificate_from_another_ca_is_refused(
    mtls_mesh: SecureMesh, tmp_path: Path
) -> None:
    assert mtls_mesh.certs is not None
    stranger = write_throwaway_ca(tmp_path / "other", services=())[OPERATOR]
    connection = Connection(
        ca=mtls_mesh.certs.ca,
        cert=stranger.cert,
        key=stranger.key,
        service_token=mtls_mesh.service_token,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health_of(connection, mtls_mesh.targets["router"])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", SERVICES)
async def test_a_plaintext_client_is_refused_at_every_tls_listener(
    mtls_mesh: SecureMesh, service: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health_of(Connection(), mtls_mesh.targets[service])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_gateway_serves_tls_to_clients_without_a_certificate(
    mtls_mesh: SecureMesh,
) -> None:
    assert mtls_mesh.certs is not None
    tenant = Connection(ca=mtls_mesh.certs.ca)
    assert await health_of(tenant, mtls_mesh.gateway) == health_pb2.HealthCheckResponse.SERVING


async def test_a_mesh_certificate_alone_is_a_mesh_identity(mtls_mesh: SecureMesh) -> None:
    """No service token: the verified client certificate admits the call."""
    operator = mtls_mesh.operator(token=False)
    async with operator.channel(mtls_mesh.targets["router"]) as ch:
        listed = await router_pb2_grpc.RouterStub(ch).ListReplicas(router_pb2.ListReplicasRequest())
    assert [r.address for r in listed.replicas] == [mtls_mesh.targets["inference"]]
    async with operator.channel(mtls_mesh.targets["inference"]) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        info = await stub.GetModelInfo(inference_pb2.GetModelInfoRequest())
        assert info.model.name == mtls_mesh.model
        request = inference_pb2.InferenceGenerateRequest(
            request=generation_pb2.GenerateRequest(model=mtls_mesh.model, prompt="hi", max_tokens=4)
        )
        chunks = [chunk async for chunk in stub.Generate(request)]
    assert chunks and chunks[-1].finish_reason


async def test_the_openai_http_face_serves_https_with_the_gateway_certificate(
    mtls_mesh: SecureMesh,
) -> None:
    assert mtls_mesh.certs is not None
    api_key = await mtls_mesh.new_api_key()
    headers = {"authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(verify=str(mtls_mesh.certs.ca)) as https:
        listed = await https.get(f"{mtls_mesh.gateway_http}/v1/models", headers=headers)
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()["data"]] == [mtls_mesh.model]
    plain = mtls_mesh.gateway_http.replace("https://", "http://")
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.HTTPError):
            await http.get(f"{plain}/v1/models", headers=headers)
