"""Builds a tiny random-weight Llama with a real tokenizer, with no download.

The tokenizer is a byte-level BPE trained on the Python standard library's
own sources (present on every machine with Python); the chat template is
ChatML. The result loads in transformers and vLLM like any hub model, so the
local stack and the tests use the same `--model PATH` code path as production.

    python -m local_models.tiny_llama --out .maas/models/tiny-llama
"""

from __future__ import annotations

import argparse
import json
import shutil
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaConfig

COMPLETE_MARKER = ".complete"
VOCAB_SIZE = 4096
CONTEXT_LENGTH = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# A bounded, sorted slice of the standard library: enough text for a real BPE,
# deterministic so every machine builds the same tokenizer.
TRAINING_FILES = 300
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _training_text() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())[:TRAINING_FILES]
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def _build_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=CONTEXT_LENGTH,
    )
    fast.save_pretrained(out)
    eos_id = fast.convert_tokens_to_ids("<|im_end|>")
    assert isinstance(eos_id, int)
    return eos_id


def llama_config(
    eos_id: int,
    bos_id: int,
    pad_id: int,
    *,
    hidden_size: int,
    num_layers: int,
    tie_word_embeddings: bool,
) -> LlamaConfig:
    """The tiny Llama shape (4 heads, 2 KV heads, bf16) over this tokenizer;
    tiny_embed builds its model on the same one."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=512,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=tie_word_embeddings,
        dtype="bfloat16",
    )


def _build_weights(out: Path, eos_id: int, bos_id: int, pad_id: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = llama_config(
        eos_id, bos_id, pad_id, hidden_size=HIDDEN, num_layers=LAYERS, tie_word_embeddings=False
    )
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.to(dtype=torch.bfloat16)  # type: ignore[call-arg]  # transformers types .to oddly
    model.save_pretrained(out, safe_serialization=True)
    generation = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id
    )
    generation.save_pretrained(out)


HIDDEN = 256
KV_DIM = 128  # 2 KV heads x 64
LAYERS = 2


def build_tiny_adapter(out_dir: Path, rank: int = 8, seed: int = 1) -> Path:
    """A random LoRA adapter (PEFT layout) on the tiny model's q and v
    projections: enough to change its output, which is what tests check."""
    if (out_dir / "adapter_config.json").exists():
        # Built before (the config is written last): no torch import, which
        # costs `make run` over a second at each start.
        return out_dir
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        for proj, out_dim in (("q_proj", HIDDEN), ("v_proj", KV_DIM)):
            base = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            a = torch.randn(rank, HIDDEN, generator=generator) * 0.5
            b = torch.randn(out_dim, rank, generator=generator) * 0.5
            tensors[f"{base}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{base}.lora_B.weight"] = b.to(torch.bfloat16)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config))
    return out_dir


def build_tiny_model(out_dir: Path) -> Path:
    """Builds the model into `out_dir` unless a complete build is there."""
    return build_with_tokenizer(out_dir, "tiny-llama", _build_weights)


def build_with_tokenizer(
    out_dir: Path, marker: str, build_weights: Callable[[Path, int, int, int], None]
) -> Path:
    """Builds this tokenizer and then `build_weights(dir, eos_id, bos_id,
    pad_id)` into `out_dir` unless a complete build is there.

    Built in a temporary sibling and renamed into place, so an interrupted
    build never leaves a half model where a complete one is expected."""
    out_dir = out_dir.resolve()
    if (out_dir / COMPLETE_MARKER).exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; containers mount it read-only
    try:
        eos_id = _build_tokenizer(staging)
        vocab = json.loads((staging / "tokenizer.json").read_text())["model"]["vocab"]
        build_weights(staging, eos_id, vocab["<|endoftext|>"], vocab["<|pad|>"])
        (staging / COMPLETE_MARKER).write_text(f"{marker}\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the tiny local model (no download).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--adapter-out", type=Path, help="also build a random LoRA adapter here")
    args = parser.parse_args()
    path = build_tiny_model(args.out)
    print(f"tiny model ready in {path}")
    if args.adapter_out:
        print(f"tiny LoRA adapter ready in {build_tiny_adapter(args.adapter_out)}")


if __name__ == "__main__":
    main()
