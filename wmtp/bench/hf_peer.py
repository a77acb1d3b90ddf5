"""The peer: a Hugging Face transformers Llama of a given shape, trained the usual way.

AdamW, parameters in fp32 under bf16 autocast, ``attn_implementation="sdpa"``, with or without
``torch.compile``. Run beside ``wmtp bench step`` in the same call so the ratio is side by side.
transformers is a dev/bench dependency only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wmtp.bench.timing import Timing, bf16_peak_tflops, peak_memory_gib, time_call
from wmtp.models.args import ModelArgs, training_flops_per_token


@dataclass(frozen=True)
class PeerResult:
    name: str
    tokens_per_s: float
    mfu: float
    peak_tflops: float
    peak_memory_gib: float
    step: Timing

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu,
            "peak_tflops": self.peak_tflops,
            "peak_memory_gib": self.peak_memory_gib,
            "step": self.step.to_dict(),
        }


def hf_llama(args: ModelArgs, attn_implementation: str) -> torch.nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` with exactly ``args``' shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config)


def bench_hf(
    args: ModelArgs,
    *,
    batch: int,
    seq_len: int,
    compile: bool,
    attn_implementation: str = "sdpa",
    warmup: int = 5,
    repeats: int = 20,
) -> PeerResult:
    """Tokens/s and MFU of one HF training step (forward, backward, AdamW) on the current GPU."""
    device = torch.device("cuda")
    model = hf_llama(args, attn_implementation).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model) if compile else model
    tokens = torch.randint(0, args.vocab_size, (batch, seq_len), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    timing = time_call(step, warmup=warmup, repeats=repeats)
    memory = peak_memory_gib(step)
    tokens_per_s = batch * seq_len / (timing.median_ms / 1e3)
    peak, _ = bf16_peak_tflops()
    mfu = tokens_per_s * training_flops_per_token(args, seq_len) / (peak * 1e12)
    name = f"hf-{attn_implementation}{'+compile' if compile else ''}"
    return PeerResult(name, tokens_per_s, mfu, peak, memory, timing)
