"""The real engine's own `vllm:*` metrics, scraped over HTTP from the
inference service's Prometheus endpoint beside the service's own, and gone
from it once the service stops."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import grpc

from maas.v1 import generation_pb2, inference_pb2, inference_pb2_grpc
from observability import setup
from observability.settings import TelemetrySettings
from services.inference.engine import Engine
from services.inference.server import serving
from services.inference.settings import InferenceSettings
from tests.support import free_port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
        return text


def samples(text: str, metric: str) -> list[float]:
    """The values of every series of `metric` in the exposition text."""
    pattern = re.compile(rf"^{re.escape(metric)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return [float(v) for v in pattern.findall(text)]


async def test_the_engines_vllm_metrics_are_served_beside_the_services(
    vllm_engine: Engine,
) -> None:
    model = vllm_engine.model_info.name
    telemetry = setup("inference", TelemetrySettings(prometheus_port=free_port()))
    port = telemetry.prometheus_port
    assert port is not None
    # The service records none of its own yet: one through its meter stands in.
    telemetry.meter().create_counter("maas.inference.probe").add(1)
    settings = InferenceSettings(model=model, port=0, grace_period_s=0.5)
    try:
        async with (
            serving(settings, telemetry, engine=vllm_engine) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch,
        ):
            request = inference_pb2.InferenceGenerateRequest(
                request=generation_pb2.GenerateRequest(
                    model=model, prompt="count these", max_tokens=6, ignore_eos=True
                )
            )
            chunks = [c async for c in inference_pb2_grpc.InferenceStub(ch).Generate(request)]
            assert chunks[-1].usage.completion_tokens == 6
            served = await asyncio.to_thread(scrape, port)
        after = await asyncio.to_thread(scrape, port)
    finally:
        telemetry.shutdown()

    # The autoscaling signals (deploy/k8s): requests running and waiting.
    assert samples(served, "vllm:num_requests_running"), served
    assert samples(served, "vllm:num_requests_waiting"), served
    # The engine's counters saw the request (the session's earlier ones too).
    assert sum(samples(served, "vllm:generation_tokens_total")) >= 6, served
    assert 'model_name="tiny-llama"' in served
    # Beside the service's own OpenTelemetry series, on the same endpoint.
    assert samples(served, "maas_inference_probe_total") == [1.0], served
    assert "vllm:" not in after
