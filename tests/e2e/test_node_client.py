"""The Node.js client in examples/node (@grpc/grpc-js with the .proto files
loaded at run time, with protos/ as its only include directory) against the
live mesh: it streams a completion, calls a named tool, embeds a batch of
texts with the embedding model's mesh, prints the usage the gateway bills,
and fails with the gRPC status on a bad key.
Its packages come from the npm registry (`npm ci`, once per session): when
that cannot be reached, these tests fail."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import grpc
import jsonschema  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from maas.v1 import embedding_pb2, gateway_pb2_grpc
from maas_cli.client import MaasClient
from tests.e2e.test_embeddings import billed, embed_mesh, embed_tenant  # noqa: F401 (fixtures)
from tests.mesh import Mesh, TenantKey
from tests.support import ProcessResult, eventually, run_process

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "examples" / "node"
USAGE_LINE = re.compile(
    r"^usage: prompt_tokens=(\d+) completion_tokens=(\d+) cached_tokens=(\d+)"
    r" finish_reason=(\w+) model=(\S+) request_id=(\w+)$",
    re.MULTILINE,
)
EMBEDDING_LINE = re.compile(r"^embedding: (\d+) (\[.*\])$", re.MULTILINE)
EMBED_USAGE_LINE = re.compile(
    r"^usage: prompt_tokens=(\d+) inputs=(\d+) model=(\S+) request_id=(\w+)$", re.MULTILINE
)


@dataclass(frozen=True)
class NodeClient:
    node: str

    async def run(self, mesh: Mesh, api_key: str, *args: str) -> ProcessResult:
        return await run_process(
            self.node,
            NODE_DIR / "client.js",
            *args,
            env={
                "MAAS_GATEWAY": mesh.gateway,
                "MAAS_API_KEY": api_key,
                # protos/ alone: the client's default include path, and its only one.
                "MAAS_PROTOS": str(REPO / "protos"),
            },
        )


@pytest_asyncio.fixture(scope="session")
async def node_client() -> NodeClient:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm must be on PATH to test the Node.js client")
    installed = await run_process(npm, "ci", "--no-audit", "--no-fund", cwd=NODE_DIR)
    if installed.returncode != 0:
        pytest.fail(f"npm ci failed (is the npm registry reachable?):\n{installed.stderr}")
    return NodeClient(node)


async def test_the_node_client_streams_a_completion_and_prints_what_was_billed(
    mesh: Mesh, tenant_key: TenantKey, node_client: NodeClient
) -> None:
    ran = await node_client.run(
        mesh,
        tenant_key.api_key,
        *("--model", mesh.model, "--max-tokens", "12", "--seed", "7", "--temperature", "0.5"),
        *("--chat", "Hello from Node"),
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.removesuffix("\n"), "no text was streamed"
    printed = USAGE_LINE.search(ran.stderr)
    assert printed is not None, ran.stderr
    prompt_tokens, completion_tokens = int(printed[1]), int(printed[2])
    assert 0 < completion_tokens <= 12
    assert printed[4] in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")
    assert printed[5] == mesh.model

    async with MaasClient(mesh.gateway, tenant_key.api_key) as client:

        async def billed() -> bool:
            return (await client.usage()).requests == 1

        await eventually(billed)
        usage = await client.usage()
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, completion_tokens)
    # The printed id is the one the gateway gave the request (initial metadata).
    request_ids = {
        span.attributes.get("maas.request_id")
        for span in mesh.spans["gateway"].get_finished_spans()
        if span.name == "/maas.v1.Gateway/Generate" and span.attributes is not None
    }
    assert printed[6] in request_ids


async def test_the_node_client_exits_with_the_status_on_a_bad_key(
    mesh: Mesh, node_client: NodeClient
) -> None:
    ran = await node_client.run(mesh, "maas_nope_nope", "--model", mesh.model, "Hello")
    assert ran.returncode == 16, ran.stderr  # the code of UNAUTHENTICATED
    assert ran.stderr.startswith("error: UNAUTHENTICATED (code 16): ")
    assert "usage:" not in ran.stderr


async def test_the_node_client_calls_a_named_tool(
    mesh: Mesh, tenant_key: TenantKey, node_client: NodeClient
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    }
    ran = await node_client.run(
        mesh,
        tenant_key.api_key,
        *("--model", mesh.model, "--max-tokens", "32", "--temperature", "0"),
        *("--tool", f"get_weather={json.dumps(schema)}", "--tool-choice", "get_weather"),
        "Weather in Rome?",
    )
    assert ran.returncode == 0, ran.stderr
    call = re.search(r"^tool_call: (call_\w+) (\S+) (.+)$", ran.stdout, re.MULTILINE)
    assert call is not None, ran.stdout
    assert call[2] == "get_weather"
    jsonschema.validate(json.loads(call[3]), schema)
    printed = USAGE_LINE.search(ran.stderr)
    assert printed is not None and printed[4] == "FINISH_REASON_TOOL_CALLS", ran.stderr


async def test_the_node_client_embeds_a_batch_of_texts(
    embed_mesh: Mesh,  # noqa: F811 (the fixture imported above)
    embed_tenant: TenantKey,  # noqa: F811
    node_client: NodeClient,
) -> None:
    texts = ["the sea", "a tide coming in"]
    # No --model: the client picks the mesh's embedding model from ListModels.
    ran = await node_client.run(
        embed_mesh, embed_tenant.api_key, "--embed", "--dimensions", "64", *texts
    )
    assert ran.returncode == 0, ran.stderr
    lines = EMBEDDING_LINE.findall(ran.stdout)
    assert [int(index) for index, _ in lines] == [0, 1], ran.stdout
    vectors = [json.loads(values) for _, values in lines]
    assert [len(v) for v in vectors] == [64, 64]
    assert all(math.isclose(math.hypot(*v), 1.0, abs_tol=1e-3) for v in vectors)
    printed = EMBED_USAGE_LINE.search(ran.stderr)
    assert printed is not None, ran.stderr
    assert (int(printed[2]), printed[3]) == (2, embed_mesh.model)

    # The same vectors and tokens as the gRPC Embed gives Python.
    request = embedding_pb2.EmbedRequest(model=embed_mesh.model, dimensions=64)
    for text in texts:
        request.inputs.add(text=text)
    async with grpc.aio.insecure_channel(embed_mesh.gateway) as channel:
        reply = await gateway_pb2_grpc.GatewayStub(channel).Embed(
            request, metadata=(("authorization", f"Bearer {embed_tenant.api_key}"),)
        )
    for printed_vector, embedding in zip(vectors, reply.embeddings, strict=True):
        assert all(
            math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
            for a, b in zip(printed_vector, embedding.values, strict=True)
        )
    prompt_tokens = int(printed[1])
    assert prompt_tokens == reply.usage.prompt_tokens > 0
    # Billed by the inputs' tokens, with no completion.
    assert await billed(embed_mesh, embed_tenant, 2) == (2 * prompt_tokens, 0)
