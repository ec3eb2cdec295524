"""`python -m deploy.docker.compose_test` (`make compose-test`): the compose
stack really run, end to end, then torn down whatever happened.

Installs or starts what Docker needs (deploy/docker/tools.sh), builds every
image from Debian's packages (deploy/docker/build.sh), brings the stack up and
waits for health, bootstraps a key the documented way, streams a completion
through each gateway's published HTTP port with a trace id of its own, embeds
two texts with the embedding model through a gateway, uploads a tenant's
private LoRA adapter with the host's `maas adapter create` and streams a
completion with it by name (an inference replica fetches it from auth), finds
that trace under gateway, auth, router and inference in the trace sink's log
and the gateways' token counts in Prometheus' API, then kills one auth
replica under steady load and counts failed requests. Exits 1 naming each
failed check; 2 when Docker cannot be had here. Standard library only."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
PROJECT = "maas-compose-test"
GATEWAYS = {"gateway": "http://127.0.0.1:8000", "gateway-2": "http://127.0.0.1:8001"}
PROMETHEUS = "http://127.0.0.1:9090"
# Every hop a completion crosses, by the service.name each reports.
HOPS = ("gateway", "auth", "router", "inference")
# The stack's slowest start is the engine loading the model on 2 shared cores.
UP_TIMEOUT_S = 900
# Long enough for the trace sink's batch (the SDK exports every 5 s) and a
# Prometheus scrape (every 5 s) with margin.
OBSERVE_TIMEOUT_S = 60
# Steady load while one auth replica is killed: before, after, and how many at once.
LOAD_BEFORE_KILL_S = 8.0
LOAD_AFTER_KILL_S = 20.0
LOAD_WORKERS = 3
# Tokens a test completion asks for: short, the engine is a tiny CPU model.
MAX_TOKENS = 16
# The gateway's published gRPC port (the CLI speaks gRPC) and the host's CLI and Python.
GATEWAY_GRPC = "127.0.0.1:50051"
HOST_PYTHON = REPO / ".venv" / "bin" / "python"
HOST_MAAS = REPO / ".venv" / "bin" / "maas"
ADAPTER_NAME = "compose-test-adapter"


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.lines.append(text)
        print(text, flush=True)

    def check(self, ok: bool, what: str) -> bool:
        self.say(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)
        return ok


def compose(*args: str, capture: bool = False, check: bool = True) -> str:
    # Quiet: the progress lines of a dozen containers would bury the report.
    argv = ["docker", "compose", "--progress", "quiet", "-p", PROJECT, "--profile", "cpu", *args]
    done = subprocess.run(
        argv, cwd=REPO, check=check, text=True, capture_output=capture, env=os.environ
    )
    return done.stdout if capture else ""


def readable_models(tmp: Path) -> str:
    """A copy of .maas/models that the containers' uid 10001 can read: the
    tiny model's weights are written owner-only (0600)."""
    copy = tmp / "models"
    shutil.copytree(REPO / ".maas" / "models", copy)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return str(copy)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def stream_completion(
    base: str, key: str, model: str, trace_id: str | None = None
) -> dict[str, object]:
    """One streamed /v1/completions call; its text, usage and the number of events."""
    body = json.dumps(
        {
            "model": model,
            "prompt": "The mesh runs in containers and",
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if trace_id:
        # W3C trace context: this trace id, a fresh parent span, sampled.
        headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    request = urllib.request.Request(f"{base}/v1/completions", body, headers)
    text, usage, events, done = "", None, 0, False
    # Time for a tiny model's 16 tokens on a busy 2-core machine, with margin.
    with urllib.request.urlopen(request, timeout=120) as reply:
        for raw in reply:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            events += 1
            for choice in event.get("choices") or []:
                text += choice.get("text") or ""
            usage = event.get("usage") or usage
    return {"text": text, "usage": usage, "events": events, "done": done}


def private_adapter(tmp: Path, key: str, base_model: str, report: Report) -> None:
    """A tenant uploads a tiny LoRA adapter for the tiny model through the
    gateway (the host's CLI), then streams a completion with it by name."""
    directory = tmp / "adapter"
    # The tiny model is already built (make compose-test needs it); this adds the adapter.
    subprocess.run(
        [str(HOST_PYTHON), "-m", "local_models.tiny_llama",
         "--out", str(REPO / ".maas" / "models" / "tiny-llama"), "--adapter-out", str(directory)],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    created = subprocess.run(
        [str(HOST_MAAS), "adapter", "create", ADAPTER_NAME, str(directory),
         "--base-model", base_model, "--gateway", GATEWAY_GRPC, "--api-key", key, "--json"],
        cwd=REPO, text=True, capture_output=True,
    )  # fmt: skip
    if not report.check(
        created.returncode == 0,
        f"maas adapter create {ADAPTER_NAME} on {base_model}: "
        f"{(created.stdout or created.stderr).strip()[:120]!r}",
    ):
        return
    try:
        result = stream_completion(GATEWAYS["gateway"], key, ADAPTER_NAME)
    except (urllib.error.URLError, RuntimeError) as err:
        report.check(False, f"a completion with the private adapter failed: {err}")
        return
    usage = result["usage"] if isinstance(result["usage"], dict) else {}
    completion = int(usage.get("completion_tokens", 0))
    report.check(
        bool(result["done"]) and bool(result["text"]) and completion > 0,
        f"{ADAPTER_NAME} streamed {completion} completion tokens, fetched from auth's "
        f"registry by the replica: {str(result['text'])[:40]!r}",
    )


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


def models(base: str, key: str) -> dict[str, str]:
    """Each model /v1/models lists, with its kind (chat, completion, embedding)."""
    request = urllib.request.Request(
        f"{base}/v1/models", headers={"authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return {m["id"]: str(m.get("kind")) for m in json.loads(reply.read())["data"]}


def embed(base: str, key: str, model: str, texts: list[str]) -> dict[str, object]:
    """One /v1/embeddings call; OpenAI's reply as it came."""
    request = urllib.request.Request(
        f"{base}/v1/embeddings",
        json.dumps({"model": model, "input": texts}).encode(),
        {"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    # A tiny model on a busy 2-core machine, with margin.
    with urllib.request.urlopen(request, timeout=60) as reply:
        body = json.loads(reply.read())
    assert isinstance(body, dict)
    return body


def spans_of(trace_id: str) -> set[str]:
    """service.name of every span of `trace_id` the trace sink has logged."""
    services = set()
    for line in compose("logs", "--no-log-prefix", "trace-sink", capture=True).splitlines():
        try:
            span = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(span, dict) and span.get("trace_id") == trace_id:
            services.add(str(span.get("service")))
    return services


def prometheus_tokens() -> tuple[str, float] | None:
    """The gateways' token counter as Prometheus has it: (series, summed value)."""
    names = get_json(f"{PROMETHEUS}/api/v1/label/__name__/values")
    assert isinstance(names, dict)
    counter = next((n for n in names["data"] if n.startswith("maas_gateway_tokens")), None)
    if counter is None:
        return None
    query = urllib.parse.urlencode({"query": f"sum({counter})"})
    reply = get_json(f"{PROMETHEUS}/api/v1/query?{query}")
    assert isinstance(reply, dict)
    result = reply["data"]["result"]
    return (counter, float(result[0]["value"][1])) if result else None


def wait_for(probe: Callable[[], T], timeout_s: float) -> T:
    """probe() until it is truthy or `timeout_s` has passed; its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        # Polls are cheap; a second keeps the wait short without spinning.
        time.sleep(1.0)


def busiest_auth() -> tuple[str, str, int]:
    """(id, name, connections) of the auth replica the gateways hold most
    connections to: the one whose loss they must survive (a channel that
    picks one address would never notice the other's death)."""
    # 50052, auth's gRPC port, as /proc/net/tcp writes it; state 01 is ESTABLISHED.
    port, established = f"{50052:04X}", "01"
    peers: dict[str, int] = {}
    for gateway in GATEWAYS:
        table = compose("exec", "-T", gateway, "cat", "/proc/net/tcp", capture=True)
        for row in table.splitlines()[1:]:
            fields = row.split()
            remote, state = fields[2], fields[3]
            address, _, remote_port = remote.partition(":")
            if remote_port == port and state == established:
                ip = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
                peers[ip] = peers.get(ip, 0) + 1
    best: tuple[str, str, int] | None = None
    for container in compose("ps", "-q", "auth", capture=True).split():
        name, ip = subprocess.run(
            ["docker", "inspect", "-f",
             "{{.Name}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container],
            capture_output=True, text=True, check=True,
        ).stdout.strip().lstrip("/").split()  # fmt: skip
        if best is None or peers.get(ip, 0) > best[2]:
            best = (container, name, peers.get(ip, 0))
    if best is None:
        raise ValueError("no auth container runs")
    return best


def constraint_refused(base: str, key: str, model: str) -> tuple[int, str]:
    """A JSON-schema constraint through a gateway of the control image (no
    grammar backend): its HTTP status and error message."""
    body = {
        "model": model,
        "prompt": "{",
        "max_tokens": 4,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "n", "schema": {"type": "object"}},
        },
    }
    request = urllib.request.Request(
        f"{base}/v1/completions",
        json.dumps(body).encode(),
        {"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    try:
        # Refused before admission: seconds would mean it waited on something.
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, ""
    except urllib.error.HTTPError as err:
        return err.code, str(json.loads(err.read()).get("error", {}).get("message", ""))


def load_while_killing(key: str, model: str, report: Report) -> None:
    """Steady streamed completions through both gateways while one auth replica dies."""
    stop = threading.Event()
    ok, failed, errors = [0, 0], [0, 0], []
    killed = threading.Event()
    lock = threading.Lock()

    def worker(n: int) -> None:
        base = list(GATEWAYS.values())[n % len(GATEWAYS)]
        while not stop.is_set():
            phase = 1 if killed.is_set() else 0
            try:
                result = stream_completion(base, key, model)
            except (OSError, RuntimeError, ValueError) as err:
                result = {"done": False, "why": f"{type(err).__name__}: {err}"}
            # A tiny random model may well stream text that decodes to nothing:
            # a request succeeded when its stream ended as the protocol says.
            success = bool(result["done"])
            if not success:
                with lock:
                    errors.append(f"{base}: {result.get('why', 'the stream ended without [DONE]')}")
            with lock:
                (ok if success else failed)[phase] += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(LOAD_WORKERS)]
    for thread in threads:
        thread.start()
    time.sleep(LOAD_BEFORE_KILL_S)
    victim, name, held = busiest_auth()
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    killed.set()
    report.say(f"     killed auth replica {name} under load ({held} gateway connections to it)")
    time.sleep(LOAD_AFTER_KILL_S)
    stop.set()
    for thread in threads:
        thread.join()
    report.say(
        f"     load: {ok[0]} ok / {failed[0]} failed before the kill, "
        f"{ok[1]} ok / {failed[1]} failed after"
    )
    for error in errors[:5]:
        report.say(f"     {error}")
    report.check(sum(failed) == 0, "no request failed while an auth replica was killed")
    report.check(ok[1] > 0, "requests completed after the kill")


def run(report: Report, tmp: Path) -> None:
    env = os.environ
    env.setdefault("MAAS_AUTH_ADMIN_TOKEN", new_secret())
    env.setdefault("MAAS_AUTH_KEY_PEPPER", new_secret())
    env.setdefault("MAAS_SERVICE_TOKEN", new_secret())

    start = time.monotonic()
    if "MAAS_MODELS_DIR" not in env:
        env["MAAS_MODELS_DIR"] = readable_models(tmp)
    compose("up", "-d", "--no-build", "--wait", "--wait-timeout", str(UP_TIMEOUT_S))
    report.say(f"     stack healthy in {time.monotonic() - start:.0f}s")
    states = compose("ps", "--format", "{{.Service}} {{.Status}}", capture=True).splitlines()
    for line in states:
        report.say(f"       {line}")
    report.check(
        sum(1 for s in states if s.startswith("auth ")) == 2
        and all("healthy" in s for s in states),
        "every container healthy, auth as 2 replicas",
    )

    # The README's way: the operator's one-shot inside an auth container.
    key = compose(
        "exec", "-T", "auth", "python", "-m", "deploy.docker.first_key", "compose-test",
        "--requests-per-minute", "6000", "--max-concurrent-requests", "64",
        capture=True,
    ).strip().splitlines()[-1]  # fmt: skip
    report.check(key.startswith("sk-") or len(key) >= 20, "a first API key bootstrapped")

    served = models(GATEWAYS["gateway"], key)
    model = next(name for name, kind in served.items() if kind != "embedding")
    traces: dict[str, str] = {}
    tokens = 0
    for name, base in GATEWAYS.items():
        trace_id = secrets.token_hex(16)
        result = stream_completion(base, key, model, trace_id)
        usage = result["usage"] if isinstance(result["usage"], dict) else {}
        completion = int(usage.get("completion_tokens", 0))
        tokens += int(usage.get("total_tokens", 0))
        report.check(
            bool(result["done"]) and bool(result["text"]) and completion > 0,
            f"{name} ({base}) streamed {result['events']} events, "
            f"{completion} completion tokens: {str(result['text'])[:40]!r}",
        )
        traces[name] = trace_id

    embedder = next((name for name, kind in served.items() if kind == "embedding"), None)
    if report.check(embedder is not None, f"an embedding model is listed: {served}"):
        assert embedder is not None
        vectors = embed(GATEWAYS["gateway"], key, embedder, ["the sea", "the mountains"])
        data = vectors.get("data")
        widths = [len(v["embedding"]) for v in data] if isinstance(data, list) else []
        embed_usage = vectors.get("usage")
        embedded = int(embed_usage.get("prompt_tokens", 0)) if isinstance(embed_usage, dict) else 0
        report.check(
            len(widths) == 2 and min(widths) > 0 and embedded > 0,
            f"{embedder} embedded 2 texts through /v1/embeddings: widths {widths}, "
            f"{embedded} prompt tokens",
        )

    private_adapter(tmp, key, model, report)

    quota_url = compose(
        "exec", "-T", "auth", "printenv", "MAAS_AUTH_QUOTA_URL", capture=True, check=False
    ).strip()
    if quota_url:
        keys = compose("exec", "-T", "redis", "redis-cli", "dbsize", capture=True).strip()
        report.check(
            keys.isdigit() and int(keys) > 0,
            f"auth keeps its quota state in Redis ({quota_url}): {keys} keys",
        )
    else:
        report.say("     auth keeps quota state in its own memory (MAAS_AUTH_QUOTA_URL unset)")

    status, message = constraint_refused(GATEWAYS["gateway"], key, model)
    report.check(
        status == 400 and "no grammar backend" in message,
        f"a JSON-schema constraint is refused at once without torch in the image: {status} "
        f"{message[:60]!r}",
    )

    for name, trace_id in traces.items():

        def whole(trace_id: str = trace_id) -> set[str]:
            seen = spans_of(trace_id)
            return seen if set(HOPS) <= seen else set()

        found = wait_for(whole, OBSERVE_TIMEOUT_S) or spans_of(trace_id)
        report.check(
            set(HOPS) <= found,
            f"trace {trace_id} (via {name}) has spans from {', '.join(sorted(found)) or 'nothing'}",
        )

    def counted() -> float:
        got = prometheus_tokens()
        return got[1] if got and got[1] >= tokens else 0.0

    counter = wait_for(counted, OBSERVE_TIMEOUT_S) or (prometheus_tokens() or ("", 0.0))[1]
    report.check(
        counter >= tokens > 0,
        f"Prometheus counts {counter:g} tokens in maas_gateway_tokens_total "
        f"(the two completions: {tokens})",
    )

    load_while_killing(key, model, report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="use the images already built")
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    args = parser.parse_args(argv)
    began = time.monotonic()
    tools = subprocess.run(["bash", "deploy/docker/tools.sh"], cwd=REPO)
    if tools.returncode != 0:
        print("compose-test: SKIPPED, Docker cannot be used on this machine (above)", flush=True)
        return 2
    report = Report()
    if not args.no_build:
        started = time.monotonic()
        subprocess.run(["bash", "deploy/docker/build.sh"], cwd=REPO, check=True)
        report.say(f"     images built in {time.monotonic() - started:.0f}s")
    tmp = Path(tempfile.mkdtemp(prefix="maas-compose-test-"))
    try:
        run(report, tmp)
    except (subprocess.CalledProcessError, OSError, ValueError, KeyError, IndexError) as err:
        report.check(False, f"the run stopped: {type(err).__name__}: {err}")
        compose("ps", "-a", check=False)
        compose("logs", "--tail", "30", check=False)
    finally:
        if not args.keep:
            compose("down", "-v", "--remove-orphans", "-t", "20", check=False)
            shutil.rmtree(tmp, ignore_errors=True)
    report.say(f"compose-test: {time.monotonic() - began:.0f}s in all")
    if report.failures:
        print("compose-test FAILED:\n  " + "\n  ".join(report.failures), flush=True)
        return 1
    print("compose-test passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
