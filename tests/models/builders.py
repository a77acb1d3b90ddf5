"""Checkpoints built by the tests themselves: raw Meta state dicts, tiny transformers Llamas."""

from __future__ import annotations

import math

import torch

PARAMS = {  # a Meta params.json; vocab from the tokenizer (the embedding rows)
    "dim": 32,
    "n_layers": 5,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": -1,
    "multiple_of": 16,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "n_future_tokens": 3,
}
VOCAB = 53


def meta_state_dict(params: dict, vocab: int) -> dict[str, torch.Tensor]:
    """Random weights under Meta's key names, shapes worked out here from params.json."""
    dim, hd = params["dim"], params["dim"] // params["n_heads"]
    kv = params["n_kv_heads"] * hd
    hidden = int(2 * 4 * dim / 3)
    hidden = params["multiple_of"] * math.ceil(hidden / params["multiple_of"])
    shapes = {
        "attention.wq.weight": (dim, dim),
        "attention.wk.weight": (kv, dim),
        "attention.wv.weight": (kv, dim),
        "attention.wo.weight": (dim, dim),
        "feed_forward.w1.weight": (hidden, dim),
        "feed_forward.w2.weight": (dim, hidden),
        "feed_forward.w3.weight": (hidden, dim),
        "attention_norm.weight": (dim,),
        "ffn_norm.weight": (dim,),
    }
    n = params["n_future_tokens"]
    prefixes = [f"layers.{i}." for i in range(params["n_layers"] - n + 1)]
    prefixes += [f"extra_heads.{j}." for j in range(n - 1)]
    sd = {
        p + k: torch.randn(s) * (0.3 if len(s) == 2 else 1.0)
        for p in prefixes
        for k, s in shapes.items()
    }
    sd["tok_embeddings.weight"] = torch.randn(vocab, dim)
    sd["norm.weight"] = torch.rand(dim) + 0.5
    sd["output.weight"] = torch.randn(vocab, dim) * 0.3
    sd["rope.freqs"] = torch.zeros(hd // 2)  # present in some Meta checkpoints, ignored
    return sd


def tiny_hf_llama(**config):
    import transformers

    sizes = {
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 48,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5,
    }
    cfg = transformers.LlamaConfig(**(sizes | config))
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF initialises norms to 1; make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model
