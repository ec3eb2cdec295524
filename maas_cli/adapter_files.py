"""An adapter's files as `maas adapter create` sends them: sizes checked from
the files' stat before a byte is read, the weights streamed from disk in
upload-sized chunks, never held whole."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from maas_cli.client import ADAPTER_CHUNK_BYTES
from services.common.adapter_limits import MAX_CONFIG_BYTES

# PEFT's file names in an adapter's directory.
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterFileError(ValueError):
    """A file over its limit; the message names the file and the limit."""


@dataclass(frozen=True)
class AdapterFiles:
    config: Path
    weights: Path
    # The weights' size when checked: reading stops there.
    weights_bytes: int

    def config_json(self) -> bytes:
        """The config, at most one byte past its limit (the registry refuses that)."""
        with self.config.open("rb") as file:
            return file.read(MAX_CONFIG_BYTES + 1)

    def weight_chunks(self) -> Iterator[bytes]:
        """The weights in chunks of at most ADAPTER_CHUNK_BYTES, read as they
        are sent, and no more than the checked size even if the file grew."""
        left = self.weights_bytes
        with self.weights.open("rb") as file:
            while left > 0 and (chunk := file.read(min(ADAPTER_CHUNK_BYTES, left))):
                left -= len(chunk)
                yield chunk


def missing_files(directory: Path) -> list[str]:
    return [
        str(directory / name)
        for name in (CONFIG_FILE, WEIGHTS_FILE)
        if not (directory / name).is_file()
    ]


def checked_files(directory: Path, max_weights_bytes: int) -> AdapterFiles:
    """The adapter's two files (both there: see `missing_files`), each within
    its limit by its stat, before anything is read."""
    config, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    config_bytes, weights_bytes = config.stat().st_size, weights.stat().st_size
    if config_bytes > MAX_CONFIG_BYTES:
        raise AdapterFileError(
            f"{config} is {config_bytes} bytes, over the limit of {MAX_CONFIG_BYTES} bytes"
        )
    if weights_bytes > max_weights_bytes:
        raise AdapterFileError(
            f"{weights} is {weights_bytes} bytes, over the limit of {max_weights_bytes} bytes "
            "(--max-bytes)"
        )
    return AdapterFiles(config, weights, weights_bytes)
