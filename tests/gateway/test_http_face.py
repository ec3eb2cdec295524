"""The gateway's HTTP face without a model: started and stopped with the
gateway, refused keys and malformed requests in OpenAI's error shape, the
request id in and out, and a router that is down as a 503. Real auth and
anomaly servers on port 0; the router's address has nothing behind it."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio

from gateway.server import serving as serving_gateway
from gateway.settings import GatewaySettings
from maas.v1 import auth_pb2, auth_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.anomaly.core import AnomalyCore
from services.anomaly.server import serving as serving_anomaly
from services.anomaly.settings import AnomalySettings
from services.auth.server import serving as serving_auth
from services.auth.settings import AuthSettings
from tests.support import eventually, free_port


@dataclass
class Backends:
    auth: str
    anomaly: str
    anomaly_core: AnomalyCore
    admin_token: str
    tmp: Path

    def gateway_settings(self, **fields: object) -> GatewaySettings:
        settings: dict[str, object] = {
            "port": 0,
            "http_port": 0,
            "router_address": f"127.0.0.1:{free_port()}",
            "auth_address": self.auth,
            "anomaly_address": self.anomaly,
            "grace_period_s": 1.0,
            "usage_outbox_path": self.tmp / f"outbox-{secrets.token_hex(4)}.db",
        }
        settings.update(fields)
        return GatewaySettings(**settings)  # type: ignore[arg-type]

    async def api_key(self, scopes: tuple[str, ...] = ()) -> str:
        admin = (("authorization", f"Bearer {self.admin_token}"),)
        async with grpc.aio.insecure_channel(self.auth) as ch:
            stub = auth_pb2_grpc.AuthStub(ch)
            tenant = await stub.CreateTenant(
                auth_pb2.CreateTenantRequest(name=f"t-{secrets.token_hex(4)}"), metadata=admin
            )
            created = await stub.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(
                    tenant_id=tenant.tenant_id, name="http", scopes=list(scopes)
                ),
                metadata=admin,
            )
        return created.api_key


@pytest_asyncio.fixture
async def backends(tmp_path: Path) -> AsyncIterator[Backends]:
    admin_token = secrets.token_urlsafe(32)
    db_path = tmp_path / "auth.db"
    async with AsyncExitStack() as stack:
        auth = await stack.enter_async_context(
            serving_auth(
                AuthSettings(
                    port=0,
                    admin_token=admin_token,
                    key_pepper=secrets.token_urlsafe(32),
                    database_path=db_path,
                    grace_period_s=0,
                ),
                setup("auth", TelemetrySettings()),
            )
        )
        anomaly = await stack.enter_async_context(
            serving_anomaly(
                AnomalySettings(port=0, grace_period_s=0), setup("anomaly", TelemetrySettings())
            )
        )
        yield Backends(
            auth=f"127.0.0.1:{auth.port}",
            anomaly=f"127.0.0.1:{anomaly.port}",
            anomaly_core=anomaly.core,
            admin_token=admin_token,
            tmp=tmp_path,
        )


@pytest_asyncio.fixture
async def http(backends: Backends) -> AsyncIterator[httpx.AsyncClient]:
    settings = backends.gateway_settings()
    async with serving_gateway(settings, setup("gateway", TelemetrySettings())) as gateway:
        assert gateway.http_port is not None and gateway.http_port != 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as client:
            yield client


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param


async def test_a_missing_key_is_401_and_reported_to_anomaly(
    http: httpx.AsyncClient, backends: Backends
) -> None:
    response = await http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert_openai_error(response, 401)
    assert response.json()["error"]["type"] == "authentication_error"
    # A request id is made for every request and returned.
    assert len(response.headers["x-request-id"]) == 32
    await eventually(lambda: backends.anomaly_core.stats().by_kind["EVENT_KIND_AUTH_FAILURE"] == 1)


async def test_the_callers_request_id_comes_back_beside_the_one_the_mesh_minted(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/v1/models", headers={"x-request-id": "mine-1"})
    assert_openai_error(response, 401)
    assert response.headers["x-client-request-id"] == "mine-1"
    assert len(response.headers["x-request-id"]) == 32  # the mesh's, never the caller's
    again = await http.get("/v1/models", headers={"x-request-id": "mine-1"})
    assert again.headers["x-request-id"] != response.headers["x-request-id"]


async def test_malformed_requests_are_openai_errors(
    http: httpx.AsyncClient, backends: Backends
) -> None:
    auth = {"authorization": f"Bearer {await backends.api_key()}"}
    broken = await http.post(
        "/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json", **auth},
    )
    assert_openai_error(broken, 400)
    missing = await http.post("/v1/completions", json={"prompt": "hi"}, headers=auth)
    assert_openai_error(missing, 400, "model")
    assert_openai_error(await http.get("/v1/nothing-here"), 404)
    assert_openai_error(await http.get("/v1/chat/completions"), 405)


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"start_time": "yesterday"}, "start_time"),
        ({"start_time": "2026-12-01T00:00:00"}, "start_time"),  # no offset: ambiguous
        ({"end_time": str(10**15)}, "end_time"),
        ({"start_time": "1" * 41}, "start_time"),
        ({"start_time": "1767225600", "end_time": "1764547200"}, "end_time"),
        ({"group_by": "week"}, "group_by"),
    ],
)
async def test_usage_refuses_a_bad_query_naming_the_parameter(
    http: httpx.AsyncClient, backends: Backends, query: dict[str, str], param: str
) -> None:
    auth = {"authorization": f"Bearer {await backends.api_key()}"}
    assert_openai_error(await http.get("/v1/usage", params=query, headers=auth), 400, param)


async def test_usage_needs_a_key_that_may_read_usage(
    http: httpx.AsyncClient, backends: Backends
) -> None:
    assert_openai_error(await http.get("/v1/usage"), 401)
    generate_only = await backends.api_key(scopes=("generate",))
    refused = await http.get("/v1/usage", headers={"authorization": f"Bearer {generate_only}"})
    assert_openai_error(refused, 403)


async def test_a_new_tenants_usage_is_empty_and_costs_nothing(
    http: httpx.AsyncClient, backends: Backends
) -> None:
    auth = {"authorization": f"Bearer {await backends.api_key()}"}
    response = await http.get(
        "/v1/usage",
        params={"start_time": "2026-12-01T00:00:00+01:00", "end_time": "1798761600"},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["requests"], body["total_tokens"]) == ("usage", 0, 0)
    assert (body["start_time"], body["end_time"]) == (1796079600, 1798761600)
    assert body["cost"] == {"value": "0.000000", "micros": 0, "currency": ""}
    assert body["data"] == [] and body["unpriced_models"] == []


async def test_a_router_that_is_down_is_503(http: httpx.AsyncClient, backends: Backends) -> None:
    key = await backends.api_key()
    response = await http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
    assert_openai_error(response, 503)
    assert response.json()["error"]["type"] == "service_unavailable_error"


async def test_the_http_face_can_be_turned_off(backends: Backends) -> None:
    settings = backends.gateway_settings(http_port=None)
    async with serving_gateway(settings, setup("gateway", TelemetrySettings())) as gateway:
        assert gateway.http_port is None
        assert gateway.port > 0


async def test_a_taken_http_port_fails_the_start(backends: Backends) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = backends.gateway_settings(http_port=taken.getsockname()[1])
        with pytest.raises(OSError):
            async with serving_gateway(settings, setup("gateway", TelemetrySettings())):
                pass


async def test_a_body_is_not_parsed_before_its_key_is_accepted(http: httpx.AsyncClient) -> None:
    # Broken JSON, no key: the key is what is refused; the body was never parsed.
    response = await http.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 401)


async def send_unfinished_post(port: int, head: dict[str, str], sent: int) -> bytes:
    """POSTs a head declaring a 100 MB body, sends only `sent` bytes of it,
    then reads the answer without sending more: an answer proves the server
    did not wait for (or read) the rest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        "host: test",
        "content-type: application/json",
        f"content-length: {HUNDRED_MB}",
        *(f"{key}: {value}" for key, value in head.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + b"x" * sent)
    await writer.drain()
    answer = await reader.read()  # the server closes after its refusal
    writer.close()
    return answer


HUNDRED_MB = 100 * 1024 * 1024


async def test_an_unauthenticated_huge_post_is_refused_before_its_body(
    backends: Backends,
) -> None:
    settings = backends.gateway_settings(http_max_body_bytes=200 * 1024 * 1024)
    async with serving_gateway(settings, setup("gateway", TelemetrySettings())) as gateway:
        assert gateway.http_port is not None
        answer = await send_unfinished_post(gateway.http_port, {}, sent=64 * 1024)
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"authentication_error" in answer


async def test_a_declared_body_over_the_limit_is_413_naming_it(backends: Backends) -> None:
    key = await backends.api_key()
    settings = backends.gateway_settings(http_max_body_bytes=4096)
    async with serving_gateway(settings, setup("gateway", TelemetrySettings())) as gateway:
        assert gateway.http_port is not None
        answer = await send_unfinished_post(
            gateway.http_port, {"authorization": f"Bearer {key}"}, sent=1024
        )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"over the limit of 4096 bytes" in answer


async def test_a_chunked_body_is_cut_off_at_the_limit(backends: Backends) -> None:
    key = await backends.api_key()
    settings = backends.gateway_settings(http_max_body_bytes=4096)
    async with serving_gateway(settings, setup("gateway", TelemetrySettings())) as gateway:
        assert gateway.http_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
        head = (
            "POST /v1/completions HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n"
            f"authorization: Bearer {key}\r\ncontent-type: application/json\r\n\r\n"
        )
        # 8 KiB in 1 KiB chunks and no last chunk: the body never ends, and
        # only a server that stops at the limit can answer.
        writer.write(head.encode() + b"400\r\n" + b" " * 1024 + b"\r\n")
        for _ in range(7):
            writer.write(b"400\r\n" + b" " * 1024 + b"\r\n")
        await writer.drain()
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"over the limit of 4096 bytes" in answer


async def test_headers_past_the_limit_are_refused(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/models", headers={"x-padding": "p" * (64 * 1024)})
    assert response.status_code == 431
