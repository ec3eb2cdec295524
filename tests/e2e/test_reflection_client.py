"""examples/reflection_client.py against the live mesh: with no .proto file and
no generated code (the `maas` package cannot even be imported), it learns the
gateway's contract from server reflection, lists the services and streams
Generate from a JSON request."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.mesh import Mesh, TenantKey
from tests.support import ProcessResult, run_process

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "examples" / "reflection_client.py"
# Runs the client with `maas` (and so maas.v1) made unimportable.
WITHOUT_MAAS = (
    "import runpy, sys; sys.modules['maas'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


async def reflect(mesh: Mesh, *args: str) -> ProcessResult:
    return await run_process(
        sys.executable, "-c", WITHOUT_MAAS, CLIENT, "--address", mesh.gateway, *args
    )


async def test_list_shows_the_gateway_health_and_reflection(mesh: Mesh) -> None:
    listed = await reflect(mesh, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "maas.v1.Gateway",
    ]
    methods = await reflect(mesh, "list", "maas.v1.Gateway")
    assert methods.returncode == 0, methods.stderr
    assert (
        "Generate(maas.v1.GenerateRequest) returns (stream maas.v1.GenerateResponse)"
        in methods.stdout.splitlines()
    )


async def test_call_streams_generate_from_json(mesh: Mesh, tenant_key: TenantKey) -> None:
    request = {"model": mesh.model, "prompt": "Hello by reflection", "max_tokens": 8}
    called = await reflect(
        mesh,
        "call",
        "maas.v1.Gateway/Generate",
        "-H",
        f"authorization: Bearer {tenant_key.api_key}",
        "-d",
        json.dumps(request),
    )
    assert called.returncode == 0, called.stderr
    chunks = [json.loads(line) for line in called.stdout.splitlines()]
    assert len(chunks) > 1, "the answer was not streamed"
    assert "".join(chunk.get("text", "") for chunk in chunks)
    assert all("finishReason" not in chunk for chunk in chunks[:-1])
    assert chunks[-1]["finishReason"] in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")
    tokens = sum(len(chunk.get("tokenIds", [])) for chunk in chunks)
    assert chunks[-1]["usage"]["completionTokens"] == tokens


async def test_call_fails_with_the_status_or_names_the_mistake(mesh: Mesh) -> None:
    request = json.dumps({"model": mesh.model, "prompt": "Hello"})
    no_key = await reflect(mesh, "call", "maas.v1.Gateway/Generate", "-d", request)
    assert no_key.returncode == 16, no_key.stderr  # the code of UNAUTHENTICATED
    assert no_key.stderr.startswith("error: UNAUTHENTICATED (code 16): ")

    typo = await reflect(mesh, "call", "maas.v1.Gateway/Generate", "-d", '{"modle": "x"}')
    assert typo.returncode == 2
    assert "modle" in typo.stderr

    unknown = await reflect(mesh, "call", "maas.v1.Gateway/Summarize", "-d", request)
    assert unknown.returncode == 2
    assert "no method 'maas.v1.Gateway/Summarize'" in unknown.stderr
