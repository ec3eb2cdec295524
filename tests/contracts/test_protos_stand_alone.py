"""protos/ stands alone: it compiles with nothing on the include path but
itself and protobuf's own well-known types (which every protoc and
@grpc/proto-loader ship), and the public API imports no internal contract."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

PROTOS = Path(__file__).resolve().parents[2] / "protos"
IMPORT = re.compile(r'^import\s+(?:public\s+|weak\s+)?"([^"]+)";', re.MULTILINE)
WELL_KNOWN = "google/protobuf/"
# What the public API may see: itself, the generation and embedding messages
# every hop shares, the usage totals it returns, and a tenant's adapters.
PUBLIC_API = {
    "maas/v1/gateway.proto",
    "maas/v1/adapter.proto",
    "maas/v1/generation.proto",
    "maas/v1/embedding.proto",
    "maas/v1/usage.proto",
}


def proto_files() -> list[str]:
    return sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))


def imports_of(name: str) -> list[str]:
    return IMPORT.findall((PROTOS / name).read_text())


def test_every_import_is_in_protos_or_a_well_known_type() -> None:
    missing = {
        f"{name} imports {imported}"
        for name in proto_files()
        for imported in imports_of(name)
        if not imported.startswith(WELL_KNOWN) and not (PROTOS / imported).is_file()
    }
    assert missing == set()


def test_the_public_api_imports_no_internal_contract() -> None:
    seen: set[str] = set()
    todo = ["maas/v1/gateway.proto"]
    while todo:
        name = todo.pop()
        if name not in seen and not name.startswith(WELL_KNOWN):
            seen.add(name)
            todo.extend(imports_of(name))
    assert seen == PUBLIC_API


def test_protoc_compiles_protos_with_only_protos_on_the_include_path(tmp_path: Path) -> None:
    # `python -m grpc_tools.protoc` adds its own include folder, which holds
    # protobuf's well-known types and nothing else.
    bundled = Path(str(resources.files("grpc_tools") / "_proto"))
    assert [p.name for p in (bundled / "google").iterdir()] == ["protobuf"]
    out = tmp_path / "all.pb"
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", "--include_imports"]
    ran = subprocess.run(
        [*protoc, f"--descriptor_set_out={out}", *proto_files()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert {f.name for f in compiled.file} >= {*proto_files(), "google/protobuf/any.proto"}


@pytest.mark.parametrize("name", ["google/rpc/status.proto"])
def test_vendored_googleapis_files_keep_their_license(name: str) -> None:
    assert "Licensed under the Apache License, Version 2.0" in (PROTOS / name).read_text()
