"""The Node.js client in examples/node (@grpc/grpc-js with the .proto files
loaded at run time, with protos/ as its only include directory) against the
live mesh: it streams a completion, calls a named tool, prints
the usage the gateway bills, and fails with the gRPC status on a bad key.
Its packages come from the npm registry (`npm ci`, once per session): when
that cannot be reached, these tests fail."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from maas_cli.client import MaasClient
from tests.mesh import Mesh, TenantKey
from tests.support import ProcessResult, eventually, run_process

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "examples" / "node"
USAGE_LINE = re.compile(
    r"^usage: prompt_tokens=(\d+) completion_tokens=(\d+) cached_tokens=(\d+)"
    r" finish_reason=(\w+) model=(\S+) request_id=(\w+)$",
    re.MULTILINE,
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
