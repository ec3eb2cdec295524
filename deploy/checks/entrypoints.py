"""The project's `python -m` entry points as the deploy checks see them.

Nothing is learnt by parsing code or running it: a service's settings class
(its flags and `MAAS_*` variables) and gRPC services come from its declared
ServiceSpec (services.catalog), a non-service module's flags and variables
from its CommandSpec; what one invocation (a command line plus an
environment) amounts to is what the service's own settings class makes of it."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsError

from deploy.runtime.spec import CommandSpec
from services.catalog import DEPLOYED
from services.common.settings import ServiceSettings
from services.common.spec import ServiceSpec

_PYTHON = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")


def python_module(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """(module, args) of `python -m module args...`; None for anything else."""
    if len(argv) >= 3 and _PYTHON.match(argv[0]) and argv[1] == "-m":
        return argv[2], list(argv[3:])
    return None


def module_exists(module: str) -> bool:
    """Whether `python -m module` finds something to run in this project."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return module_exists(f"{module}.__main__")
    return True


def service_spec(module: str) -> ServiceSpec[Any] | None:
    """The declared spec of the service `python -m module` runs; None for any other module."""
    return next((spec for spec in DEPLOYED if spec.module == module), None)


@functools.cache
def command_spec(module: str) -> CommandSpec | None:
    """What a non-service module declares it takes (its `SPEC`); None if it declares nothing."""
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        return None
    spec = getattr(loaded, "SPEC", None)
    return spec if isinstance(spec, CommandSpec) else None


@dataclass
class Invocation:
    """What one command line and environment amount to."""

    module: str
    args: list[str]
    spec: ServiceSpec[Any] | None = None
    # The service's validated settings; None when they do not validate.
    settings: ServiceSettings | None = None
    problems: list[str] = field(default_factory=list)


MISSING_SERVICE_TOKEN = "has no service token, which the mesh's other services hold"


def missing_service_token(invocations: Mapping[str, Invocation | None]) -> list[str]:
    """Where some services of one mesh hold the service token and others do
    not: those others' calls to internal services would be refused, and their
    own listeners would answer anyone. The names of the services without it
    (of those whose settings validate)."""
    settings = {
        name: i.settings
        for name, i in invocations.items()
        if i is not None and i.settings is not None
    }
    if not any(s.service_token is not None for s in settings.values()):
        return []
    return [name for name, s in settings.items() if s.service_token is None]


def invoke(module: str, args: Sequence[str], env: Mapping[str, str]) -> Invocation:
    """Checks `python -m module args` under `env` the way the module itself
    would take them: its settings class parses the flags and validates the
    values (env under flags, defaults under both); nothing else is read."""
    result = Invocation(module, list(args))
    maas_vars = sorted(name for name in env if name.upper().startswith("MAAS_"))
    if not module_exists(module):
        result.problems.append(f"`python -m {module}`: no such module in the project")
        return result
    spec = service_spec(module)
    if spec is None:
        declared = command_spec(module)
        if declared is None:
            result.problems.append(f"`{module}` declares no SPEC: its flags cannot be checked")
            return result
        reads = declared.environment
        result.problems += [
            f"{name}: `{module}` is no service and reads no such variable"
            for name in maas_vars
            if name not in reads
        ]
        result.problems += _unknown_flags(declared, args)
        return result
    result.spec = spec
    values: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for name in maas_vars:
        if not name.upper().startswith(spec.env_prefix):
            result.problems.append(f"{name}: {spec.module} reads only {spec.env_prefix}* variables")
            continue
        path = _field_path(spec.settings_type, name[len(spec.env_prefix) :].lower().split("__"))
        if path is None:
            result.problems.append(f"{name}: no such setting of {spec.module}")
            continue
        try:
            value = _env_value(spec.settings_type, path, env[name])
        except json.JSONDecodeError as err:
            result.problems.append(f"{name}: a list or mapping setting takes JSON ({err})")
            continue
        _put(values, path, value)
        origins[path] = name
    try:
        flags = CliSettingsSource(
            spec.settings_type,
            cli_parse_args=list(args),
            # As ServiceSettings.from_cli parses them.
            cli_kebab_case=True,
            cli_implicit_flags=True,
            cli_exit_on_error=False,
        )()
    except SettingsError as err:
        result.problems.append(f"flags of {spec.module}: {err}")
        return result
    for path in _leaf_paths(flags):
        origins[path] = "--" + ".".join(part.replace("_", "-") for part in path)
    _merge(values, flags)
    for path in _leaf_paths(values):
        _stand_in_for_secret(spec.settings_type, values, path)
    try:
        settings_type: type[ServiceSettings] = spec.settings_type
        result.settings = _isolated(settings_type)(**values)
    except ValidationError as err:
        for error in err.errors():
            path = tuple(str(part) for part in error["loc"])
            result.problems.append(f"{_origin(spec, path, origins)}: {error['msg']}")
    return result


# Stands for a secret the deploy file leaves to deploy time (`<VAR>`): its
# value, so whether it is long enough, is not known here. Long enough for any
# least length a secret setting has.
_SECRET_STAND_IN_LENGTH = 256


def _stand_in_for_secret(
    model: type[BaseModel], values: dict[str, Any], path: tuple[str, ...]
) -> None:
    node = values
    for part in path[:-1]:
        node = node[part]
    value = node[path[-1]]
    if not (isinstance(value, str) and value.startswith("<") and value.endswith(">")):
        return
    try:
        annotation = _annotation_at(model, path)
    except (KeyError, AssertionError):
        return  # no such setting: validation names it
    if SecretStr in (annotation, *get_args(annotation)):
        node[path[-1]] = value.ljust(_SECRET_STAND_IN_LENGTH, "*")


def _unknown_flags(declared: CommandSpec, args: Sequence[str]) -> list[str]:
    used = [arg.partition("=")[0] for arg in args if arg.startswith("--")]
    return [
        f"{flag}: no such flag of {declared.module}" for flag in used if flag not in declared.flags
    ]


def _field_path(model: type[BaseModel], parts: list[str]) -> tuple[str, ...] | None:
    path: list[str] = []
    for i, part in enumerate(parts):
        info = model.model_fields.get(part)
        if info is None:
            return None
        path.append(part)
        if i < len(parts) - 1:
            nested = _model_of(info.annotation)
            if nested is None:
                return None
            model = nested
    return tuple(path)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _annotation_at(model: type[BaseModel], path: tuple[str, ...]) -> Any:
    annotation: Any = model
    for part in path:
        nested = _model_of(annotation)
        assert nested is not None
        annotation = nested.model_fields[part].annotation
    return annotation


def _is_complex(annotation: Any) -> bool:
    """Whether pydantic-settings reads the field's env value as JSON."""
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_is_complex(a) for a in get_args(annotation) if a is not type(None))
    origin = get_origin(annotation) or annotation
    return (inspect.isclass(origin) and issubclass(origin, BaseModel)) or origin in (
        list,
        set,
        frozenset,
        tuple,
        dict,
    )


def _env_value(model: type[BaseModel], path: tuple[str, ...], raw: str) -> Any:
    return json.loads(raw) if _is_complex(_annotation_at(model, path)) else raw


def _put(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        values = values.setdefault(part, {})
    values[path[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _leaf_paths(values: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            paths += _leaf_paths(value, (*prefix, key))
        else:
            paths.append((*prefix, key))
    return paths


def _origin(
    spec: ServiceSpec[Any], path: tuple[str, ...], origins: dict[tuple[str, ...], str]
) -> str:
    if not path:  # a rule across settings (the model's own validator)
        return spec.module
    for n in range(len(path), 0, -1):
        if path[:n] in origins:
            return origins[path[:n]]
    flag = "--" + ".".join(part.replace("_", "-") for part in path)
    env = spec.env_prefix + "__".join(path).upper()
    return f"{spec.module} {flag} / {env}"


@functools.cache
def _isolated(settings_type: type[ServiceSettings]) -> type[ServiceSettings]:
    """The settings class reading nothing but its arguments (not this
    process's environment), so only what the deploy file says is checked."""

    def sources(
        cls: type[BaseSettings], /, settings_cls: type[BaseSettings], init_settings: Any, **_: Any
    ) -> tuple[Any, ...]:
        return (init_settings,)

    isolated: type[ServiceSettings] = type(
        f"Checked{settings_type.__name__}",
        (settings_type,),
        {"settings_customise_sources": classmethod(sources)},
    )
    return isolated
