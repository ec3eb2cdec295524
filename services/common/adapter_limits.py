"""Bounds of a private LoRA adapter's files, shared by auth's registry, which
enforces them, and the CLI, which refuses a file past them before reading it."""

from __future__ import annotations

# adapter_config.json as PEFT writes it is about 1 KiB; 64 KiB is generous.
MAX_CONFIG_BYTES = 64 * 1024
# The registry's weights limit by default (auth's --max-adapter-bytes): a
# rank-64 LoRA of a 7B model's attention is ~34 MiB in fp16.
DEFAULT_MAX_WEIGHTS_BYTES = 64 * 1024 * 1024
# The most any registry may be set to take: the weights are one stored value,
# and SQLite (SQLITE_MAX_LENGTH) and PostgreSQL (bytea) both stop at 1 GB.
MAX_WEIGHTS_BYTES = 1_000_000_000
