"""`maas adapter create|list|delete` against a whole mesh on a simulated
engine: the tiny model's real LoRA files uploaded from their directory,
--json documents, and exit statuses that follow the gRPC status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner, Result

from local_models.tiny_llama import build_tiny_adapter
from maas_cli.adapter_files import checked_files
from maas_cli.cli import app
from maas_cli.client import ADAPTER_CHUNK_BYTES
from services.common.adapter_limits import DEFAULT_MAX_WEIGHTS_BYTES
from services.mesh import MeshOptions, running_mesh
from tests.gateway.test_adapters import MODEL, SIM, new_key


async def maas(gateway: str, api_key: str, *args: str) -> Result:
    """Runs the CLI in a thread (it runs its own event loop)."""
    # rich wraps tables to the terminal width; 250 holds every column.
    env = {"MAAS_GATEWAY": gateway, "MAAS_API_KEY": api_key, "COLUMNS": "250"}
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def test_adapter_commands(tmp_path: Path) -> None:
    built = build_tiny_adapter(tmp_path / "lora", rank=4, seed=2)
    weights = (built / "adapter_model.safetensors").read_bytes()
    options = MeshOptions(state=tmp_path / "mesh", model=MODEL, overrides={"inference": SIM})
    admin = (("authorization", f"Bearer {options.admin_token}"),)
    async with running_mesh(options) as mesh:
        key = await new_key(mesh, admin)
        reader = await new_key(mesh, admin, key.tenant_id, scopes=["generate"])
        gateway = mesh.target("gateway")

        created = await maas(
            gateway, key.api_key, "adapter", "create", "sql-lora", "--base-model", MODEL,
            str(built), "--json",
        )  # fmt: skip
        assert created.exit_code == 0, created.output
        [adapter] = json.loads(created.output)
        assert (adapter["name"], adapter["base_model"]) == ("sql-lora", MODEL)
        assert (adapter["rank"], adapter["size_bytes"]) == (4, len(weights))
        assert adapter["adapter_id"].startswith("ad-")

        listed = await maas(gateway, reader.api_key, "adapter", "list", "--json")
        assert listed.exit_code == 0, listed.output
        assert json.loads(listed.output) == [adapter]
        table = await maas(gateway, key.api_key, "adapter", "list")
        assert "sql-lora" in table.output and adapter["adapter_id"] in table.output
        models = await maas(gateway, key.api_key, "models", "--json")
        assert "sql-lora" in {m["name"] for m in json.loads(models.output)["models"]}

        taken = await maas(
            gateway, key.api_key, "adapter", "create", "sql-lora", "--base-model", MODEL,
            str(built),
        )  # fmt: skip
        assert taken.exit_code == 6  # ALREADY_EXISTS
        bad_base = await maas(
            gateway, key.api_key, "adapter", "create", "other", "--base-model", "no-such",
            str(built), "--json",
        )  # fmt: skip
        assert bad_base.exit_code == 3  # INVALID_ARGUMENT
        no_files = await maas(
            gateway, key.api_key, "adapter", "create", "other", "--base-model", MODEL,
            str(tmp_path / "nowhere"),
        )  # fmt: skip
        assert no_files.exit_code == 2  # bad command-line use
        not_allowed = await maas(gateway, reader.api_key, "adapter", "delete", "sql-lora")
        assert not_allowed.exit_code == 7  # PERMISSION_DENIED: no `adapters` scope

        deleted = await maas(gateway, key.api_key, "adapter", "delete", "sql-lora", "--json")
        assert deleted.exit_code == 0, deleted.output
        assert json.loads(deleted.output) == [adapter]
        again = await maas(gateway, key.api_key, "adapter", "delete", "sql-lora")
        assert again.exit_code == 5  # NOT_FOUND
        empty = await maas(gateway, key.api_key, "adapter", "list", "--json")
        assert json.loads(empty.output) == []


def test_weights_over_the_limit_are_refused_unread_naming_it(tmp_path: Path) -> None:
    built = build_tiny_adapter(tmp_path / "lora", rank=4, seed=2)
    weights = built / "adapter_model.safetensors"
    # Sparse: 65 MiB by its stat, nothing on disk; past the default 64 MiB.
    with weights.open("r+b") as file:
        file.truncate(DEFAULT_MAX_WEIGHTS_BYTES + 1024 * 1024)
    env = {"MAAS_GATEWAY": "127.0.0.1:1", "MAAS_API_KEY": "k", "COLUMNS": "250"}
    create = ["adapter", "create", "big", str(built), "--base-model", MODEL]
    refused = CliRunner().invoke(app, create, env=env)
    assert refused.exit_code == 3, refused.output  # INVALID_ARGUMENT, before any call
    assert f"over the limit of {DEFAULT_MAX_WEIGHTS_BYTES} bytes (--max-bytes)" in refused.output
    as_json = CliRunner().invoke(app, [*create, "--max-bytes", "1000", "--json"], env=env)
    assert as_json.exit_code == 3
    error = json.loads(as_json.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert "over the limit of 1000 bytes (--max-bytes)" in error["message"]
    past_any_registry = CliRunner().invoke(app, [*create, "--max-bytes", "2000000000"], env=env)
    assert past_any_registry.exit_code == 2
    assert "--max-bytes" in past_any_registry.output


def test_the_weights_are_read_in_upload_chunks_up_to_their_checked_size(tmp_path: Path) -> None:
    built = build_tiny_adapter(tmp_path / "lora", rank=4, seed=2)
    weights = built / "adapter_model.safetensors"
    with weights.open("ab") as file:
        file.write(bytes(3 * ADAPTER_CHUNK_BYTES))
    whole = weights.read_bytes()
    files = checked_files(built, len(whole))
    with weights.open("ab") as file:
        file.write(b"grown after the check")
    chunks = list(files.weight_chunks())
    assert all(len(chunk) <= ADAPTER_CHUNK_BYTES for chunk in chunks)
    assert b"".join(chunks) == whole
