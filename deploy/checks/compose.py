"""`python -m deploy.checks.compose [FILE]`: checks docker-compose.yml without
a Docker engine. It parses and keeps to the compose-spec schema; depends_on,
volumes, build targets and build args exist; every service has a health
check. The rest is deploy.checks.rules over the file's containers: names
resolve to a service or its network aliases, loopback to the caller itself,
and Prometheus' targets are those of the prometheus.yml mounted into it."""

from __future__ import annotations

import functools
import json
import re
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import yaml

from deploy.checks import dockerfile
from deploy.checks.addresses import LOOPBACK, Address, addresses_in
from deploy.checks.entrypoints import invoke, python_module
from deploy.checks.model import Container, DeclaredPort, Deployment, Endpoint, Grace, Probe, Scrape
from deploy.checks.report import checked_path, report
from deploy.checks.rules import INFERENCE, deployment_problems

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
# The compose-spec JSON schema that `docker compose config` validates against,
# vendored so the check needs no network: schema/compose-spec.json of
# github.com/compose-spec/compose-spec at 170098ba07d9 (2026-06-23; the file
# last changed 2025-10-28 in a08f8d51631b).
COMPOSE_SPEC = Path(__file__).resolve().parent / "compose-spec.json"
# What compose waits after SIGTERM when a service sets no stop_grace_period.
COMPOSE_STOP_GRACE_S = 10.0
DEPENDS_CONDITIONS = frozenset(
    {"service_started", "service_healthy", "service_completed_successfully"}
)
HEALTHCHECK_MODULE = "deploy.runtime.healthcheck"
ROUTER_MODULE = "services.router"
HTTP_READY_MODULE = "deploy.runtime.http_ready"
_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with nothing from this machine's environment:
    a default where the file gives one, else a `<VAR>` placeholder."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["braced"] or match["bare"]
        if match["op"] in (":-", "-"):
            return str(match["arg"])
        return f"<{name}>"

    return _VARIABLE.sub(replace, value)


def _interpolated(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [_interpolated(item) for item in node]
    if isinstance(node, dict):
        return {key: _interpolated(value) for key, value in node.items()}
    return node


def parse_duration(text: Any) -> float | None:
    """Seconds in a compose duration ("1m30s", "15s"); None if it is not one."""
    text = str(text).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _DURATION_S[u] for n, u in parts)


def _argv(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return [str(item) for item in value]


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    container: Container
    # Names other containers reach it by: its own and its network aliases.
    names: set[str] = field(default_factory=set)
    # YAML files of this project mounted into it: container path -> content.
    configs: dict[str, Any] = field(default_factory=dict)
    # Stages of its build that install the inference engine.
    engine_stages: list[str] = field(default_factory=list)


class ComposeCheck:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = path.parent
        self.problems: list[str] = []
        self.services: dict[str, Service] = {}
        self.volumes: set[str] = set()

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    @contextmanager
    def malformed(self, where: str) -> Iterator[None]:
        """Reports a section of an unexpected shape instead of failing on it."""
        try:
            yield
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            self.problem(where, f"malformed ({type(err).__name__}: {err})")

    def run(self) -> list[str]:
        try:
            doc = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError) as err:
            return [f"{self.path.name}: cannot be read as YAML: {err}"]
        self.problems += schema_problems(doc)
        services = doc.get("services") if isinstance(doc, dict) else None
        if not isinstance(services, dict) or not services:
            return [f"{self.path.name}: no services"]
        self.volumes = set(doc.get("volumes") or {})
        for name, spec in services.items():
            if not isinstance(spec, dict):
                self.problem(name, "not a mapping")
                continue
            with self.malformed(name):
                self.services[name] = self._load(name, spec)
        for service in self.services.values():
            with self.malformed(service.name):
                self._check_healthcheck(service)
                self._check_depends_on(service)
        deployment = Deployment(
            [s.container for s in self.services.values()],
            self._resolve,
            declare_port="give it `expose`",
            no_gpu="reserves no NVIDIA device (deploy.resources.reservations.devices)",
        )
        with self.malformed(self.path.name):
            deployment.scrapes = list(self._scrapes())
        self.problems += deployment_problems(deployment)
        with self.malformed(self.path.name):
            self._check_routed()
        return list(dict.fromkeys(self.problems))

    def _check_routed(self) -> None:
        """Every inference service is among the router's replicas: a model
        the router is never told of is served to no one."""
        routers = [
            (s.container, s.container.invocation.settings)
            for s in self.services.values()
            if s.container.invocation is not None
            and s.container.invocation.module == ROUTER_MODULE
            and s.container.invocation.settings is not None
        ]
        if not routers:
            return
        # The containers the routers dial, by identity.
        reached: set[int] = set()
        for router, settings in routers:
            for text in getattr(settings, "replicas", None) or []:
                for address in addresses_in(str(text)):
                    found = self._resolve(router, address)
                    if not isinstance(found, str):
                        reached |= {id(endpoint.container) for endpoint in found}
        for service in self.services.values():
            invocation = service.container.invocation
            if invocation is None or invocation.spec is not INFERENCE:
                continue
            if id(service.container) not in reached:
                self.problem(
                    service.name,
                    "the router's --replicas names none of its addresses: it is served to no one",
                )

    def _load(self, name: str, raw: dict[str, Any]) -> Service:
        spec = _interpolated(raw)
        container = Container(name, name=name)
        service = Service(name, spec, container, names={name})
        image = self._build(service)
        entrypoint = _argv(spec.get("entrypoint"))
        command = _argv(spec.get("command"))
        if entrypoint is None and image is not None:
            entrypoint = image[0]
            command = image[1] if command is None else command
        container.argv = [*(entrypoint or []), *(command or [])]
        container.env = self._environment(service)
        service.names |= set(self._aliases(spec))
        self._volumes(service, raw.get("volumes") or [])
        if run := python_module(container.argv):
            container.invocation = invoke(run[0], run[1], container.env)
            runs = container.invocation.spec
            if runs is not None and runs is not INFERENCE and service.engine_stages:
                self.problem(
                    name,
                    f"runs {runs.module} from an image that installs the inference engine "
                    f"(stage {', '.join(service.engine_stages)}): the control plane's "
                    "image carries no torch and no vLLM",
                )
        container.ports = [
            DeclaredPort(port, f"publishes port {port}") for port in _published(spec)
        ]
        container.exposed = set(_exposed(spec))
        container.values = [
            *container.env.items(),
            *(("command", arg) for arg in container.argv[1:]),
            *(
                (target, value)
                for target, config in service.configs.items()
                if not _is_scrape_config(config)
                for value in _strings(config)
            ),
        ]
        if "gpu" in (spec.get("profiles") or []):
            container.gpu_engine = "is in the gpu profile"
        devices = _at(spec, "deploy", "resources", "reservations", "devices") or []
        if any(
            isinstance(d, dict)
            and d.get("driver") == "nvidia"
            and "gpu" in (d.get("capabilities") or [])
            for d in devices
        ):
            container.gpu = "reserves an NVIDIA device"
        written = spec.get("stop_grace_period", f"{COMPOSE_STOP_GRACE_S}s")
        grace = parse_duration(written)
        if grace is None:
            self.problem(name, "stop_grace_period is no duration")
        else:
            container.grace = Grace(grace, f"stop_grace_period ({grace:g}s)")
        return service

    def _build(self, service: Service) -> tuple[list[str], list[str]] | None:
        """Checks the build section; the image's ENTRYPOINT and CMD, if known."""
        build = service.spec.get("build")
        if build is None:
            if "image" not in service.spec:
                self.problem(service.name, "neither image nor build")
            return None
        if isinstance(build, str):
            build = {"context": build}
        context = self.root / str(build.get("context", "."))
        path = context / str(build.get("dockerfile", "Dockerfile"))
        if not path.is_file():
            self.problem(service.name, f"build: no Dockerfile at {path.relative_to(self.root)}")
            return None
        parsed = dockerfile.load(path)
        if not parsed.stages:
            self.problem(service.name, f"build: {path.name} has no stage")
            return None
        target = str(build.get("target", parsed.last_stage))
        if target not in parsed.stages:
            stages = ", ".join(parsed.stages)
            self.problem(
                service.name, f"build target {target!r} is no stage of {path.name} ({stages})"
            )
            return None
        args = build.get("args") or {}
        names = args if isinstance(args, dict) else [str(a).partition("=")[0] for a in args]
        declared = parsed.build_args(target)
        for arg in names:
            if arg not in declared:
                self.problem(
                    service.name, f"build arg {arg} is declared by no ARG of stage {target!r}"
                )
        service.engine_stages = parsed.engine_installs(target)
        return parsed.entrypoint(target), parsed.cmd(target)

    def _environment(self, service: Service) -> dict[str, str]:
        raw = service.spec.get("environment") or {}
        if isinstance(raw, list):
            pairs = [str(item).partition("=") for item in raw]
            raw = {key: value if sep else None for key, sep, value in pairs}
        env: dict[str, str] = {}
        for key, value in raw.items():
            if isinstance(value, bool):
                self.problem(service.name, f"{key}: compose takes no YAML booleans; quote it")
            env[str(key)] = f"<{key}>" if value is None else str(value)
        return env

    @staticmethod
    def _aliases(spec: dict[str, Any]) -> Iterator[str]:
        networks = spec.get("networks")
        if isinstance(networks, dict):
            for network in networks.values():
                if isinstance(network, dict):
                    yield from (str(a) for a in network.get("aliases") or [])

    def _volumes(self, service: Service, raw: list[Any]) -> None:
        for volume, written in zip(service.spec.get("volumes") or [], raw, strict=True):
            if isinstance(volume, dict):
                source, target = str(volume.get("source", "")), str(volume.get("target", ""))
                bind = volume.get("type") == "bind"
            else:
                source, colon, rest = str(volume).partition(":")
                if not colon:
                    continue  # an anonymous volume: a container path only
                target = rest.partition(":")[0]
                bind = source.startswith((".", "/", "~"))
            if not bind:
                if source and source not in self.volumes:
                    self.problem(service.name, f"mounts volume {source}, which `volumes:` lacks")
                continue
            if "$" in str(written):
                continue  # chosen where it runs (${VARIABLE})
            path = (self.root / source).resolve()
            if not path.exists():
                self.problem(service.name, f"mounts {source}, which does not exist")
            elif path.suffix in (".yml", ".yaml"):
                try:
                    service.configs[target] = yaml.safe_load(path.read_text())
                except yaml.YAMLError as err:
                    self.problem(service.name, f"mounts {source}, which is not YAML: {err}")

    def _check_healthcheck(self, service: Service) -> None:
        check = service.spec.get("healthcheck")
        test = _argv(check.get("test")) if isinstance(check, dict) else None
        if not test or _at(check, "disable") or test[0] == "NONE":
            self.problem(service.name, "no healthcheck")
            return
        if test[0] != "CMD" or not (run := python_module(test[1:])):
            return
        module, args = run
        invocation = invoke(module, args, {})
        for text in invocation.problems:
            self.problem(service.name, f"healthcheck: {text}")
        if invocation.problems:
            return
        if module == HTTP_READY_MODULE:
            self._http_ready(service, args)
            return
        if module != HEALTHCHECK_MODULE:
            return
        if not 1 <= len(args) <= 2 or not (targets := addresses_in(args[0])):
            self.problem(service.name, f"healthcheck: {module} takes HOST:PORT [SERVICE]")
            return
        [target] = targets
        if target.host not in LOOPBACK:
            self.problem(service.name, f"healthcheck probes {target.text}, not this container")
            return
        # Dependants wait for it to be healthy: it gates start order, as readiness does.
        name = args[1] if len(args) == 2 else ""
        service.container.probes.append(Probe("healthcheck", target.port, name, readiness=True))

    def _http_ready(self, service: Service, args: list[str]) -> None:
        url = urlsplit(args[0]) if len(args) == 1 else None
        if url is None or url.scheme not in ("http", "https") or url.port is None:
            self.problem(
                service.name, f"healthcheck: {HTTP_READY_MODULE} takes one URL with a port"
            )
            return
        if url.hostname not in LOOPBACK:
            self.problem(service.name, f"healthcheck probes {url.netloc}, not this container")
            return
        service.container.probes.append(
            Probe("healthcheck", url.port, "", readiness=True, http_path=url.path or "/")
        )

    def _check_depends_on(self, service: Service) -> None:
        depends = service.spec.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {name: {} for name in depends}
        for name, condition in depends.items():
            if name not in self.services:
                self.problem(service.name, f"depends on {name!r}, which is no service")
                continue
            wanted = (condition or {}).get("condition", "service_started")
            if wanted not in DEPENDS_CONDITIONS:
                self.problem(service.name, f"depends_on {name}: unknown condition {wanted!r}")
            elif wanted == "service_healthy" and not self.services[name].spec.get("healthcheck"):
                self.problem(service.name, f"waits for {name} to be healthy; it has no healthcheck")

    def _resolve(self, caller: Container, address: Address) -> list[Endpoint] | str:
        """Loopback is the caller itself; a name, every service it names (its own or an alias)."""
        if address.host in LOOPBACK:
            return [Endpoint(caller, address.port)]
        targets = [s.container for s in self.services.values() if address.host in s.names]
        if not targets:
            return f"{address.host} is no service of this file"
        return [Endpoint(target, address.port) for target in targets]

    def _scrapes(self) -> Iterator[Scrape]:
        """The static and DNS-discovered targets of every Prometheus configuration
        mounted into a service."""
        for service in self.services.values():
            for target_path, config in service.configs.items():
                if not _is_scrape_config(config):
                    continue
                for job in config.get("scrape_configs") or []:
                    said = f"{target_path} job {job.get('job_name')}"
                    for group in job.get("static_configs") or []:
                        for text in group.get("targets") or []:
                            for address in addresses_in(str(text)):
                                yield Scrape(service.container, said, address)
                    # A name of several replicas: every address it resolves to, at one port.
                    for group in job.get("dns_sd_configs") or []:
                        for name in group.get("names") or []:
                            for address in addresses_in(f"{name}:{group.get('port')}"):
                                yield Scrape(service.container, said, address)


@functools.cache
def _compose_spec() -> Any:
    return jsonschema.Draft7Validator(json.loads(COMPOSE_SPEC.read_text()))


def schema_problems(doc: Any) -> list[str]:
    """Where the file breaks the compose-spec schema, by path: a misspelt key
    (`depend_on`) is reported as unknown, as `docker compose config` does."""
    problems = []
    for error in sorted(_compose_spec().iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(part) for part in error.absolute_path) or "(top)"
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            patterns = error.schema.get("patternProperties", {})
            for key in error.instance:
                if key not in known and not any(re.search(p, key) for p in patterns):
                    problems.append(f"{where}: unknown key {key!r} (compose-spec)")
        else:
            problems.append(f"{where}: {error.message} (compose-spec)")
    return problems


def _exposed(spec: dict[str, Any]) -> Iterator[int]:
    for item in spec.get("expose") or []:
        port = str(item).partition("/")[0]
        if port.isdigit():
            yield int(port)


def _published(spec: dict[str, Any]) -> Iterator[int]:
    """Container ports of `ports:` entries."""
    for item in spec.get("ports") or []:
        if isinstance(item, dict):
            target = item.get("target")
            if isinstance(target, int):
                yield target
            continue
        container = str(item).rpartition(":")[2].partition("/")[0]
        if container.isdigit():
            yield int(container)


def _is_scrape_config(config: Any) -> bool:
    """Whether a mounted YAML file is a Prometheus configuration."""
    return isinstance(config, dict) and "scrape_configs" in config


def _at(node: Any, *keys: str) -> Any:
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _strings(value)


def compose_problems(path: Path) -> list[str]:
    """Every problem found in the compose file at `path`; empty if none."""
    return ComposeCheck(path).run()


def main(argv: Sequence[str] | None = None) -> int:
    path = checked_path(argv, DEFAULT_FILE)
    return report(compose_problems(path), str(path.name))


if __name__ == "__main__":
    sys.exit(main())
