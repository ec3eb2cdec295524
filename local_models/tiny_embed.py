"""Builds a tiny random-weight embedding model with a real tokenizer, with no download.

A Llama whose config names the `LlamaModel` architecture: vLLM registers that
as an embedding model, so it loads with the pooling runner (last-token
pooling, normalized) on the CPU backend like any hub embedding model. The
weights keep the causal LM's names (`model.*`), which is what vLLM's loader
for that architecture reads; the head is tied to the embeddings, so none is
stored. The tokenizer is tiny_llama's, trained the same way.

    python -m local_models.tiny_embed --out .maas/models/tiny-embed
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from local_models.tiny_llama import build_with_tokenizer, llama_config

HIDDEN = 256  # the embedding's width
# A few widths a caller may truncate to (Matryoshka-style `dimensions`); vLLM
# refuses `dimensions` for a model that declares none.
MATRYOSHKA_DIMENSIONS = [64, 128, 256]
LAYERS = 2
SEED = 2  # not tiny_llama's: different weights


def _build_weights(out: Path, eos_id: int, bos_id: int, pad_id: int) -> None:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    config = llama_config(
        eos_id, bos_id, pad_id, hidden_size=HIDDEN, num_layers=LAYERS, tie_word_embeddings=True
    )
    config.matryoshka_dimensions = MATRYOSHKA_DIMENSIONS
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.to(dtype=torch.bfloat16)  # type: ignore[call-arg]  # transformers types .to oddly
    model.save_pretrained(out, safe_serialization=True)
    # save_pretrained names the class it saved; vLLM picks its runner by this name.
    config_path = out / "config.json"
    saved = json.loads(config_path.read_text())
    saved["architectures"] = ["LlamaModel"]
    config_path.write_text(json.dumps(saved, indent=2))


def build_tiny_embed_model(out_dir: Path) -> Path:
    """Builds the model into `out_dir` unless a complete build is there
    (in a temporary sibling renamed into place, as tiny_llama does)."""
    return build_with_tokenizer(out_dir, "tiny-embed", _build_weights)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the tiny embedding model (no download).")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(f"tiny embedding model ready in {build_tiny_embed_model(args.out)}")


if __name__ == "__main__":
    main()
